"""SQL storage (SQLAlchemy 2 Core): schema, engines, the ports' SQL implementation, the node store."""

from jukinet.storage.engine import make_engine
from jukinet.storage.sql_tx import SqlTx
from jukinet.storage.store import Store

__all__ = ["SqlTx", "Store", "make_engine"]
