"""Studies: scripts' logic that trains and measures many networks and appends one record per finished network
to a JSONL file (resumable: re-running skips what is recorded)."""
