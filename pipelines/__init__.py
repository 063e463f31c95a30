"""One thin module per DVC stage: resolve config and paths, call components, write outs."""
