"""Shared test set-up: hermetic homes for Prefect/MLflow, no telemetry, tiny fixtures."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

# Before anything imports prefect: results and the test database live in a throwaway home,
# so nothing cached leaks between test runs (a second run once reused the first's results).
_HOME = tempfile.mkdtemp(prefix="lmforge-tests-")
os.environ["PREFECT_HOME"] = str(Path(_HOME) / "prefect")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("MLFLOW_TRACKING_URI", None)
# A fake credential every stage and flow of the test session sees; tests/test_security.py
# searches every output, database, artifact and log for it (it must never get there).
FAKE_SECRET = "lmforge-FAKE-secret-6b1f0c9e2d4a"
os.environ["AWS_SECRET_ACCESS_KEY"] = FAKE_SECRET
LOG_DIR = Path(_HOME) / "logs"  # stage output of the session fixtures, for that search
# `dtype: auto`'s measured precision choices (components/train/precision.py) are cached in
# the throwaway home too: a test never reads or writes the user's cache.
os.environ["LMFORGE_CACHE_DIR"] = str(Path(_HOME) / "cache")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# dvc.yaml stages call `python`: make it this interpreter's.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core box they spin."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextlib.contextmanager
def same_environment():
    """Leave os.environ and MLflow's tracking URI as they were found. mlflow.set_tracking_uri also
    writes MLFLOW_TRACKING_URI, behind monkeypatch's back: monkeypatch can "restore" a URI that
    mlflow wrote mid-test (a closed port once reached `mlflow models serve` in a later test)."""
    before = dict(os.environ)
    try:
        yield
    finally:
        if "mlflow" in sys.modules:
            import mlflow

            mlflow.set_tracking_uri(None)  # it reads MLFLOW_TRACKING_URI again, as restored below
        for key in set(os.environ) - set(before):
            del os.environ[key]
        for key, value in before.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


@pytest.fixture(autouse=True)
def _same_environment_after_each_test():
    """Tests pass in any order and any subset: none sees what another left in the environment."""
    with same_environment():
        yield


@pytest.fixture
def repo_root() -> Path:
    return ROOT


# The session's tokenizers, shared by many tests: a test that changes one (a call with
# padding=True leaves padding on in its Rust backend) changes what every later test encodes.
_SHARED_TOKENIZERS: dict[str, tuple] = {}


def _tokenizer_state(tokenizer) -> tuple:
    return (tokenizer.backend_tokenizer.to_str(), tokenizer.model_max_length, tokenizer.padding_side,
            tokenizer.truncation_side, str(tokenizer.special_tokens_map))


def _shared_tokenizer(architecture: str, tmp_path_factory):
    from components.config import TokenizerConfig
    from components.objectives import ARCHITECTURES
    from components.tokens.tokenization import load_tokenizer

    out = tmp_path_factory.mktemp("tok") / architecture
    # BERT's byte alphabet alone takes 322 entries (components/tokens/tokenization.py).
    vocab_size = 700 if architecture == "bert" else 400
    ARCHITECTURES[architecture].train_tokenizer(_prose(), TokenizerConfig(vocab_size=vocab_size, min_frequency=1), out)
    tokenizer = load_tokenizer(out)
    _SHARED_TOKENIZERS[architecture] = (tokenizer, _tokenizer_state(tokenizer))
    return tokenizer


@pytest.fixture(autouse=True)
def _shared_tokenizers_unchanged():
    """Fail the test that changed a shared tokenizer, not a later one that trips over it."""
    yield
    changed = [name for name, (tokenizer, state) in _SHARED_TOKENIZERS.items() if _tokenizer_state(tokenizer) != state]
    for name in changed:  # undo the usual changes, so one culprit fails one test
        tokenizer, state = _SHARED_TOKENIZERS[name]
        tokenizer.backend_tokenizer.no_padding()
        tokenizer.backend_tokenizer.no_truncation()
        tokenizer.model_max_length = state[1]
    assert not changed, (f"this test changed the shared {' and '.join(changed)} tokenizer fixture (padding, "
                         f"truncation, max length or special tokens); change a copy.deepcopy of it instead")


@pytest.fixture(scope="session")
def bert_tokenizer(tmp_path_factory):
    """A real WordPiece tokenizer trained on a little real prose (the module docstrings here)."""
    return _shared_tokenizer("bert", tmp_path_factory)


@pytest.fixture(scope="session")
def gpt2_tokenizer(tmp_path_factory):
    return _shared_tokenizer("gpt2", tmp_path_factory)


def _prose() -> list[str]:
    import json, pathlib, argparse, collections, textwrap, functools  # noqa: E401

    docs = [m.__doc__ for m in (json, pathlib, argparse, collections, textwrap, functools) if m.__doc__]
    return docs * 3


@pytest.fixture(scope="session")
def dvc_run(tmp_path_factory) -> tuple[Path, dict]:
    """The whole tiny pipeline through `dvc repro`, once per session: (repo, metrics snapshot).

    Shared: tests that change params, the registry or files in it must say so and restore them,
    or build their own repo with pipeline_repo.make_repo.
    """
    from pipeline_repo import comparable_metrics, dvc, make_repo

    repo = make_repo(tmp_path_factory.mktemp("dvc-run"))
    proc = dvc(repo, "repro")
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    (LOG_DIR / "dvc-repro.log").write_text(proc.stdout + proc.stderr)
    return repo, comparable_metrics(repo)  # snapshot before any test changes params


@pytest.fixture(scope="session")
def dvc_repo(dvc_run) -> Path:
    return dvc_run[0]


@pytest.fixture(scope="module")
def clm(tmp_path_factory, gpt2_tokenizer):
    """(tokenizer, training blocks): a little prose packed into 32-token CLM blocks."""
    from components.config import TokenizeConfig
    from components.objectives import OBJECTIVES
    from components.tokens.tokenization import tokenize_corpus
    from components.train.pretraining import PretrainData

    out = tmp_path_factory.mktemp("clm")
    tokenize_corpus(OBJECTIVES["clm"], gpt2_tokenizer, {"train": _prose(), "validation": _prose()[:4]},
                    TokenizeConfig(block_size=32), 0, out)
    return gpt2_tokenizer, PretrainData(out, "train")


def inf_grad(x):
    """0 in the forward pass, an infinite gradient for `x` in the backward: a poisoned step."""
    import torch

    class InfGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.new_zeros(())

        @staticmethod
        def backward(ctx, grad):
            return torch.full_like(ctx.saved_tensors[0], float("inf"))

    return InfGrad.apply(x)
