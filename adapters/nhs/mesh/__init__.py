"""The MESH bridge: an NHS trust's MESH mailbox on one side, Cairn on the other (issue 16).

``settings`` (``CAIRN_MESH_*``), ``client`` (NHS England's mesh-client, made async)."""
