"""Package boundaries: the library and its command line never import Prefect (only flows/ does)."""

import subprocess
import sys


def test_dode_and_its_cli_do_not_import_prefect():
    code = (
        "import sys, dode, dode.cli, dode.distill_stored, dode.store.trajectory\n"
        "dode.cli.build_parser()\n"
        "bad = sorted(m for m in sys.modules if m == 'prefect' or m.startswith(('prefect.', 'prefect_')))\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
