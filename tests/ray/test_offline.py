"""What the Ray deployment promises without a running cluster: ray stays out of
``import rlix_plugin``, a missing ray is reported as an unavailable backend, building a ray
manager starts nothing, and the status text renders a snapshot."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from rlix_plugin.commands.status import render


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_connect_is_exported_lazily():
    proc = _run("""
        import sys, rlix_plugin
        assert "ray" not in sys.modules, "import rlix_plugin imported ray"
        connect = rlix_plugin.connect
        from rlix_plugin.ray.client import connect as real
        assert connect is real and "ray" in sys.modules
        try:
            rlix_plugin.not_there
        except AttributeError as exc:
            assert "not_there" in str(exc)
        else:
            raise SystemExit("no AttributeError")
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_missing_ray_is_a_backend_unavailable_error():
    proc = _run("""
        import sys
        sys.modules["ray"] = None   # what an environment without ray looks like to an import
        from rlix_plugin import get_plugin_manager
        from rlix_plugin.hookspecs import BackendUnavailableError
        try:
            get_plugin_manager("ray", autoload=False)
        except BackendUnavailableError as exc:
            print(exc)
        else:
            raise SystemExit("no error")
    """)
    assert proc.returncode == 0, proc.stderr
    assert "'ray' is not available" in proc.stdout and "rlix-plugin[ray]" in proc.stdout


def test_building_a_ray_manager_starts_nothing():
    proc = _run("""
        import ray
        from rlix_plugin import get_plugin_manager
        pm = get_plugin_manager("ray", autoload=False)
        assert pm.get_plugin("rlix-backend") is not None
        assert not ray.is_initialized(), "building the manager connected to Ray"
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


SNAPSHOT = {
    "pool": {"num_gpus": 4, "gpus_per_node": 4},
    "idle_gpus": [3],
    "cycles": 7,
    "resizing": False,
    "pending": {"1": [{"cluster_id": "p2_actor_train", "waiting_s": 1.25}]},
    "pipelines": {
        "p1": {
            "admitted": True,
            "clusters": {
                "actor_infer": {
                    "tp": 1,
                    "gpus": [0, 1, 2, 3],
                    "held": True,
                    "gpus_held": [0, 1],
                    "awake_dp_ranks": [0, 1],
                    "dp_size": 4,
                },
                "actor_train": {"tp": 2, "gpus": [0, 1], "held": False, "gpus_held": [], "priority": None},
            },
            "open_demand": 64,
            "remaining": 24,
            "progress": [{"mode": "full", "adapter_id": None, "completed": 40, "step_target": 64}],
            "fenced": None,
            "releasing": None,
        },
        "p2": {
            "admitted": True,
            "clusters": {
                "actor_train": {"tp": 2, "gpus": [2], "held": True, "gpus_held": [2], "priority": 1},
                "actor_infer": {
                    "tp": 1,
                    "gpus": [2],
                    "held": False,
                    "gpus_held": [],
                    "awake_dp_ranks": [],
                    "dp_size": 1,
                },
            },
            "open_demand": None,
            "remaining": 0,
            "progress": [],
            "fenced": "wake of DP ranks [0] failed",
            "releasing": None,
        },
    },
    "reaped": {"p0": "its coordinator died (ActorDiedError)"},
}


def test_status_text_names_holders_demand_progress_queue_and_idle_gpus():
    text = render(SNAPSHOT)
    assert "4 GPUs (4 per node), 2 pipeline(s), 7 cycle(s)" in text
    assert "idle GPUs: [3]" in text
    assert "awake dp [0, 1] of 4" in text and "[0,1,2,3]" in text
    assert "p1: open demand 64; progress full 40/64; remaining 24" in text
    assert "priority 1" in text and "priority 1: p2_actor_train (1.2s)" in text
    assert "FENCED: wake of DP ranks [0] failed" in text
    assert "reaped p0: its coordinator died" in text


def test_status_text_of_an_empty_scheduler():
    text = render({"pool": {"num_gpus": 2, "gpus_per_node": 2}, "idle_gpus": [0, 1], "pipelines": {}, "pending": {}})
    assert "no pipelines registered" in text and "pending: none" in text and "idle GPUs: [0, 1]" in text


def test_coalescer_flush_waits_for_a_delivery_in_progress():
    # The ray backend's flush_progress relies on this: a report the delivery thread has taken but
    # not sent yet still counts as not flushed.
    import threading

    from rlix_plugin.progress import BEGIN, ProgressCoalescer, ProgressReport

    sending = threading.Event()
    release = threading.Event()
    sent = []

    def slow_send(report):
        sending.set()
        release.wait(5)
        sent.append(report.kind)

    coalescer = ProgressCoalescer(slow_send, min_interval_s=0.05)
    coalescer.begin(ProgressReport(BEGIN, "p", 0, "full", None, 10, 0, 0))
    assert sending.wait(5)
    assert coalescer.flush(0.2) is False, "flush returned while the begin was still being sent"
    release.set()
    assert coalescer.flush(5) is True and sent == ["begin"]
    coalescer.close()
