"""The pipeline's terminal: its lines on stdout, each step's library output in its file."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from clickgraph.app.stage_logs import StageLogs


def test_stdout_stays_on_the_terminal_and_everything_else_goes_to_the_current_step(tmp_path, capfd):
    (tmp_path / "stale.log").write_text("an earlier run's")
    library = logging.getLogger("a-library")
    # made at import, like Ray's: holds the sys.stderr of its time, which writes to descriptor 2
    library.addHandler(logging.StreamHandler(open(2, "w", closefd=False)))  # noqa: SIM115
    library.propagate = False
    try:
        with StageLogs(tmp_path) as logs:
            print("pipeline [1/2] one ...")
            os.write(2, b"a C library on descriptor 2\n")
            first = logs.switch("01-one")
            library.warning("WARN routine warning")
            subprocess.run(["sh", "-c", "echo jvm notice; echo jvm warning >&2"], check=True)
            print("pipeline [2/2] two ...")
            second = logs.switch("02-two")
            print("a Python warning", file=sys.stderr)
            os.write(1, b"a child's stdout\n")
            logs.switch("03-silent")
    finally:
        library.handlers.clear()
        library.propagate = True
    out, err = capfd.readouterr()
    assert out == "pipeline [1/2] one ...\npipeline [2/2] two ...\n" and err == ""
    assert not (tmp_path / "stale.log").exists()
    assert (tmp_path / "00-pipeline.log").read_text() == "a C library on descriptor 2\n"
    assert first.read_text() == "WARN routine warning\njvm notice\njvm warning\n"
    assert second.read_text() == "a Python warning\na child's stdout\n"
    assert logs.written == [tmp_path / "00-pipeline.log", first, second]  # 03 received nothing
    assert (tmp_path / "03-silent.log").read_text() == ""
    print("after")
    os.write(2, b"stderr is the terminal again\n")
    assert capfd.readouterr() == ("after\n", "stderr is the terminal again\n")
