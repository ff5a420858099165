"""``python -m asft``: the same app as the ``asft`` console command (``flows.cli``: the library's
commands plus ``pipeline``) when the app layer is installed beside the library; else the
library's commands alone. The library itself never imports ``flows``: only this entry point
looks for it."""

from importlib.util import find_spec

if find_spec("flows") is not None and find_spec("flows.cli") is not None:
    from flows.cli import main
else:
    from asft.cli import main

main()
