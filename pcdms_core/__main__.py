import sys

from .glibc_tunables import restart_with_tunables

restart_with_tunables()  # before the heavy imports: it may start this process again

from .cli import main  # noqa: E402

sys.exit(main())
