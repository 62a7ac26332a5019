"""``isol8 serve`` for the tests: the same CLI, with conftest's table resolver and
loopback-only connector installed first, so a filtered run in a server the tests start
sends nothing beyond 127.0.0.0/8 and ::1 even if the network guard under test were broken
(the pytest process's own autouse fixture does not reach a subprocess)."""

import sys

from conftest import _loopback_connector, _table_resolver
from isol8.cli import main
from isol8.network import outbound

outbound.use(_table_resolver, _loopback_connector)
sys.exit(main(sys.argv[1:]))
