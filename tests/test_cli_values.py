"""NAME=VALUE arguments on the command line keep the value the user typed."""

import json

from perfmodel.cli import main
from perfmodel.commands.core import parse_assignments


def test_large_integers_are_kept_exactly():
    # they went through float(): 2**53 + 1 became 2**53, 10**23 became 99999999999999991611392
    kw = parse_assignments(["M=9007199254740993", "K=100000000000000000000000", "N=-3"])
    assert kw == {"M": 2**53 + 1, "K": 10**23, "N": -3}
    assert all(type(v) is int for v in kw.values())


def test_floats_booleans_and_words_keep_their_types():
    kw = parse_assignments(["a=1e3", "b=2.5", "c=3.0", "d=true", "e=no", "f=swish"])
    assert kw == {"a": 1000.0, "b": 2.5, "c": 3.0, "d": True, "e": False, "f": "swish"}
    assert type(kw["a"]) is float and type(kw["c"]) is float


def test_predict_json_echoes_the_exact_dimension(capsys):
    assert main(["predict", "matmul", "M=9007199254740993", "K=1", "N=1", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["dims"]["M"] == 9007199254740993


def test_output_into_a_closed_pipe_is_not_reported_as_an_error():
    # `perfmodel chips --sources | head -1` printed "perfmodel chips: error: [Errno 32] Broken pipe"
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "perfmodel", "chips", "--sources"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader has gone before the first line is written
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert proc.returncode == 141, err
    assert err == ""


def test_sigterm_stops_a_command_stuck_in_compiled_code(tmp_path):
    # SIGTERM is handled in Python (Terminated) so cleanup runs; a main thread inside a long compiled call
    # (an XLA compile) never got to run the handler, and `timeout` could not stop the process
    import subprocess
    import sys
    import time

    script = tmp_path / "stuck.py"
    script.write_text(
        "import signal, sys, time\n"
        "from perfmodel import cli\n"
        "with cli.terminate_as_interrupt(grace_s=0.5):\n"
        "    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # as deaf as a thread in C code\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        proc.terminate()
        _, err = proc.communicate(timeout=60)
        assert time.monotonic() - t0 < 30
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "still busy after 0.5 s" in err
