"""Stand-in for pypa's get-pip.py, which ansible-test downloads from a host these machines
cannot reach. ansible-test runs it with pip install arguments in a fresh virtual environment;
this bootstraps pip from the interpreter's own ensurepip wheel, then installs what was asked
from the package index (PyPI). `make sanity` copies it into ansible-test's cache."""
import subprocess
import sys

# get-pip.py's own options, which pip install does not know
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"], stdout=subprocess.DEVNULL)
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check"] + args))
