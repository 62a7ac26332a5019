"""Package installs before a run (``install_packages``), and the download cache they share.

``names`` validates what a request asks for, ``index`` says where a manager installs from
(and fetches what the index publishes, on the host side), ``cache`` keeps verified files for
every sandbox to read, and ``stage`` runs the installer in the run's sandbox and feeds the
cache. The engine asks through :func:`install_plan` and :func:`run_install`.
"""

from .cache import MOUNT, PackageCache, default_root
from .index import PackageIndex, package_index
from .names import satisfied, validated_packages
from .stage import (InstallPlan, PackageInstallFailed, install_plan, manager_for,
                    refresh_repl, run_install)

__all__ = ["MOUNT", "InstallPlan", "PackageCache", "PackageIndex", "PackageInstallFailed",
           "default_root", "install_plan", "manager_for", "package_index", "refresh_repl",
           "run_install", "satisfied", "validated_packages"]
