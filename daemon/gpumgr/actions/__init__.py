"""Start / stop orchestration under the GPU lock: the one place that decides what runs on a GPU."""
