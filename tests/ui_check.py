"""Each tool's own UI, looked at in a real headless browser after a pipeline run (`make ui-check`).

A tiny-profile copy of this checkout (tests/pipeline_repo.py) runs `lmforge run` against a
`prefect server start` on 127.0.0.1; then `mlflow ui` serves its mlflow.db. Chromium renders
the MLflow registry (models, aliases, the model card as description, lineage tags), the flow
run (graph and artifacts) and GX's Data Docs (the suite and its results): a PNG each under
reports/ui/, and the rendered DOM is checked for the run's own names and values, so a blank
page, an error page or another run's data fails. Not part of `make test`: it needs chromium
(`make ui-check` installs Debian's with apt-get when it is missing) and about 10 minutes.

    python tests/ui_check.py [--out reports/ui] [--keep | --reuse WORK]     # one JSON line at the end
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline_repo import free_port, make_repo, stop_group, wait_until_up  # noqa: E402

BIN = Path(sys.executable).parent
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome")
# Single-page apps (MLflow's React UI, Prefect's Vue UI) render after their API calls: give them time.
RENDER_MS = 20_000


def browser() -> str:
    for name in BROWSER_NAMES:
        if shutil.which(name):
            return shutil.which(name)
    raise SystemExit("error: ui_check: no chromium on PATH; `make ui-check` installs it (apt-get install chromium)")


def chromium(url: str, png: Path | None = None, budget_ms: int = RENDER_MS, size: str = "1400,1000") -> str:
    """The DOM as the browser rendered it after `budget_ms` of virtual time; with `png`, a screenshot too."""
    base = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={size}",
            f"--virtual-time-budget={budget_ms}", "--no-first-run", "--disable-extensions"]
    if png is not None:
        subprocess.run([*base, f"--screenshot={png}", url], capture_output=True, timeout=180, check=True)
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=True)
    return dom.stdout


@contextlib.contextmanager
def server(cmd: list[str], env: dict, health: str, log: Path, cwd: Path):
    """A server process in its own session, bound to 127.0.0.1; stopped (its group) on exit."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # 10 minutes: `mlflow ui` took over 3 to answer on a 2-core machine busy with other jobs.
            wait_until_up(health, proc, cmd[1], lambda: log.read_text()[-3000:], seconds=600)
            yield proc
        finally:
            stop_group(proc)


def base_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_TRACKING_URI"))}
    env.update(PREFECT_HOME=str(home / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               MLFLOW_DISABLE_TELEMETRY="true", GX_ANALYTICS_ENABLED="false", HF_HUB_OFFLINE="1",
               PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    return env


def prefect_env(env: dict, port: int) -> dict:
    # The UI asks the API at PREFECT_UI_API_URL; it follows PREFECT_SERVER_API_PORT, not `--port`.
    api = f"http://127.0.0.1:{port}/api"
    return {**env, "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_UI_API_URL": api, "PREFECT_API_URL": api}


def api_post(url: str, body: dict) -> list | dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


def expect(dom: str, what: str, needles: list[str]) -> dict:
    """Which of `needles` the rendered page shows; the check fails on any it lacks."""
    missing = [n for n in needles if n not in dom]
    return {"page": what, "shows": [n for n in needles if n in dom], "missing": missing}


def check_mlflow(repo: Path, env: dict, out: Path) -> list[dict]:
    registry = json.loads((repo / "reports" / "registry.json").read_text())
    names, (name, version) = sorted(_registered(registry)), _champion(registry)
    port = free_port()
    # One worker: four (the default) take minutes to start on a busy 2-core machine, for one reader.
    cmd = [str(BIN / "mlflow"), "ui", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{repo / 'mlflow.db'}"]
    with server(cmd, env, f"http://127.0.0.1:{port}/health", out / "mlflow.log", repo):
        root = f"http://127.0.0.1:{port}/#"
        models = chromium(f"{root}/models", out / "mlflow-models.png")
        version_page = chromium(f"{root}/models/{name}/versions/{version}", out / "mlflow-version.png", size="1400,2600")
        return [expect(models, "mlflow registered models", [*names, "champion"]),
                expect(version_page, f"mlflow {name} v{version}",
                       ["champion", "Training data", "lmforge.git_commit", "lmforge.requirements_lock_sha256",
                        "lmforge.torch_version", "lmforge.transformers_version", "lmforge.tokenizers_version"])]


def _registered(registry: dict) -> list[str]:
    """Every registered model of the run (reports/registry.json: classifiers and bases)."""
    return [entry["name"] for entry in registry["models"] + registry["bases"]]


def _champion(registry: dict) -> tuple[str, int]:
    """A classifier version that holds `champion`: its page shows the aliases, the card and the tags."""
    for entry in registry["models"]:
        if "champion" in entry["aliases"]:
            return entry["name"], entry["version"]
    raise SystemExit(f"error: ui_check: no champion in reports/registry.json: {registry['models']}")


def check_prefect(env: dict, port: int, out: Path) -> list[dict]:
    api = f"http://127.0.0.1:{port}/api"
    runs = api_post(f"{api}/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 1})
    run = runs[0]
    artifacts = api_post(f"{api}/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})
    keys = sorted({a["key"] for a in artifacts if a.get("key")})
    page = f"http://127.0.0.1:{port}/runs/flow-run/{run['id']}"
    return [expect(chromium(page, out / "prefect-flow-run.png"), "prefect flow run (graph)",
                   [run["name"], "Completed", "ingest", "validate", "register"]),
            expect(chromium(f"{page}?tab=Artifacts", out / "prefect-artifacts.png"), "prefect flow run artifacts",
                   keys[:3] or ["lmforge"])]


def check_data_docs(repo: Path, out: Path) -> list[dict]:
    from components.data.validation import data_docs_links

    result = json.loads((repo / "reports" / "validation" / "result.json").read_text())
    site = repo / "reports" / "validation" / "gx"
    links = data_docs_links(site, prefix=str(site.parent / "gx"))
    columns = sorted({e["column"] for e in result["expectations"] if e["column"]})
    observed = [str(e["observed_value"]) for e in result["expectations"] if isinstance(e["observed_value"], int)]
    # "Showing 1 to 1 of 1 rows": bootstrap-table filled the index from its script (the vendored copies loaded).
    return [expect(chromium(f"file://{links['index']}", out / "gx-index.png", 5000), "GX Data Docs index",
                   ["corpus", "lmforge-validate", "Showing 1 to 1 of 1 rows"]),
            expect(chromium(f"file://{links['validation']}", out / "gx-validation.png", 3000),
                   "GX Data Docs validation result", [*columns, *observed])]


def run(out: Path, keep: bool, reuse: Path | None = None) -> dict:
    """Build the tiny repo and run the flow (or, with `reuse`, take a kept one's repo and Prefect
    database as they are), then look at the three UIs."""
    out.mkdir(parents=True, exist_ok=True)
    work = reuse or Path(tempfile.mkdtemp(prefix="lmforge-ui-"))
    repo, env, port = work / "repo", base_env(work), free_port()
    penv = prefect_env(env, port)
    started, pipeline_s = time.monotonic(), None
    try:
        with server([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], penv,
                    f"http://127.0.0.1:{port}/api/health", out / "prefect.log", work):
            if reuse is None:
                repo.mkdir()
                make_repo(repo)
                run_flow(repo, {**penv, "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}, out)
                pipeline_s = round(time.monotonic() - started, 1)
            checks = check_prefect(penv, port, out)
        checks += check_mlflow(repo, env, out) + check_data_docs(repo, out)
    finally:
        if not keep and reuse is None:
            shutil.rmtree(work, ignore_errors=True)
    return {"pipeline_s": pipeline_s, "total_s": round(time.monotonic() - started, 1),
            "screenshots": sorted(str(p) for p in out.glob("*.png")), "checks": checks,
            "ok": all(not c["missing"] for c in checks), **({"work": str(work)} if keep or reuse else {})}


def run_flow(repo: Path, env: dict, out: Path) -> None:
    proc = subprocess.run([str(BIN / "lmforge"), "run"], cwd=repo, env=env, capture_output=True, text=True)
    (out / "lmforge-run.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"error: ui_check: `lmforge run` failed (rc {proc.returncode}); see {out / 'lmforge-run.log'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/ui"), help="screenshots and server logs (default: reports/ui)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder: tiny repo and Prefect home (path printed)")
    parser.add_argument("--reuse", type=Path, help="a kept work folder: look again without running the pipeline")
    args = parser.parse_args()
    browser()  # before a 5-minute pipeline run
    if args.reuse and not (args.reuse / "repo" / "reports" / "registry.json").is_file():
        raise SystemExit(f"error: ui_check: {args.reuse}: no finished run (repo/reports/registry.json); drop --reuse")
    record = run(args.out.resolve(), args.keep, args.reuse and args.reuse.resolve())
    for check in record["checks"]:
        status = "ok" if not check["missing"] else f"MISSING {', '.join(check['missing'])}"
        print(f"ui-check: {check['page']}: {status}", file=sys.stderr)
    print(json.dumps(record))
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
