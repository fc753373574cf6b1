"""Where ablate's built-in config tree is, found here once for `run`, its checks and the tests.

The repository keeps the tree at its top level, `configs/`, beside the packages. A wheel has no
top level of its own, so pyproject.toml ships that folder inside the runner package, as
`runner/configs/` (a package-dir mapping): an install from a wheel (`pip install <checkout>`)
finds it there, a checkout (and its editable install, which puts the checkout on the path)
finds `configs/` beside `runner/`.
"""

from pathlib import Path

RUNNER = Path(__file__).resolve().parents[1]
INSTALLED = RUNNER / "configs"  # where a wheel puts configs/ (pyproject.toml: tool.setuptools.package-dir)
CHECKOUT = RUNNER.parent / "configs"  # the repository's own, beside runner/
ROOT_CONFIG = "config.yaml"  # the primary config, which both hold


def configs_dir() -> Path:
    """The built-in config tree: the installed copy where there is one, else the checkout's.
    The installed copy first: next to an installed runner/ is site-packages, whose `configs`
    folder (if any) would belong to some other distribution. A checkout has no runner/configs/.
    Where neither holds config.yaml, the checkout's path, which Hydra names when it refuses it."""
    for candidate in (INSTALLED, CHECKOUT):
        if (candidate / ROOT_CONFIG).is_file():
            return candidate
    return CHECKOUT
