"""The demo's stages, end to end on CI-sized settings: each produces what the summary points to."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "tools.demo", "--quick", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "== summary ==" in proc.stdout
    assert (out / "local-wrn-10-1.sqlite").stat().st_size > 0
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["n"] == 3 and 0 <= metrics["mape"] < 100
    # the report timed some of the table's cells and the build's check networks again, and the
    # summary says how far each moved
    assert metrics["host_check"]["cells"] and [n["label"] for n in metrics["network_check"]["networks"]] == [
        "full", "uniform-0.50"]
    assert f"the table's cells ran {metrics['host_check']['drift_pct']:+.1f} %" in proc.stdout
    assert f"whole networks ran {metrics['network_check']['drift_pct']:+.1f} %" in proc.stdout
    assert "check network full: predicted" in proc.stdout  # build-tables said how the table predicts them
    assert (out / "report" / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    widths = json.loads((out / "runs" / "netadapt" / "widths.json").read_text())
    assert widths["widths"] and (out / "runs" / "netadapt" / "channels.png").exists()
    result = json.loads((out / "runs" / "winner" / "result.json").read_text())
    assert result["widths"] == widths["widths"] and result["synthetic"] is True
    assert (out / "winner.tflite").read_bytes()[4:8] == b"TFL3"
