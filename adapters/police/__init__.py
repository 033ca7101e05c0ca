"""Police force adapter: a force's incident export in; referrals and Encompass notifications out.

``import_export`` is the pure core; the ``police`` click group submits what it produces.
"""

from adapters.police.referrals import Outgoing, RowError, import_export

__all__ = ["Outgoing", "RowError", "import_export"]
