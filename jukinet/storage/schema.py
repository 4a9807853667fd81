"""Table definitions, shared by every node kind (each node uses the tables its role needs).

Dates are stored as ISO text and instants as integer microseconds since the epoch (UTC): the same
bytes on SQLite and PostgreSQL, no naive/aware datetime drift, and cheap on the hot path.
"""

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
_RowId = BigInteger().with_variant(Integer(), "sqlite")

# Every change event this node recorded (municipality) or received (prefecture, center): history,
# the next hop's outbox, and the agency change feed's source. Unique on (origin, seq).
event = Table(
    "event",
    metadata,
    Column("id", _RowId, primary_key=True, autoincrement=True),
    Column("origin", String(6), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("resident_code", String(11), nullable=False),
    Column("previous_code", String(11), nullable=False, default=""),
    Column("reason", SmallInteger, nullable=False),
    Column("effective_date", String(10), nullable=False),
    Column("recorded_us", BigInteger, nullable=False),
    Column("name", String(100), nullable=False),
    Column("alias", String(100), nullable=False),
    Column("birth_date", String(10), nullable=False),
    Column("sex", SmallInteger, nullable=False),
    Column("address", String(200), nullable=False),
    Column("request_id", String(64), nullable=True),  # municipality only: the register's idempotency key
    UniqueConstraint("origin", "seq", name="uq_event_origin_seq"),
    UniqueConstraint("request_id", name="uq_event_request_id"),
)
Index("ix_event_resident_code", event.c.resident_code)

# What each municipality last said about each code (materialized from events; see registry_state).
registration = Table(
    "registration",
    metadata,
    Column("resident_code", String(11), primary_key=True),
    Column("municipality", String(6), primary_key=True),
    Column("active", Boolean, nullable=False),
    Column("reason", SmallInteger, nullable=False),
    Column("effective_date", String(10), nullable=False),
    Column("recorded_us", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("replaced_by", String(11), nullable=False, default=""),
    Column("name", String(100), nullable=False),
    Column("alias", String(100), nullable=False),
    Column("birth_date", String(10), nullable=False),
    Column("sex", SmallInteger, nullable=False),
    Column("address", String(200), nullable=False),
    # Center only: normalized search keys (jukinet.domain.normalize); empty at the other tiers. Their index
    # is created by the center alone (SEARCH_INDEX), so the other tiers pay nothing for agency search.
    Column("name_key", String(100), nullable=False, server_default=""),
    Column("address_key", String(200), nullable=False, server_default=""),
)
Index("ix_registration_municipality", registration.c.municipality)
SEARCH_INDEX = "CREATE INDEX IF NOT EXISTS ix_registration_name_key ON registration (name_key)"

# Every call this node served or made, written in the same transaction as its effect. Hash-chained
# (jukinet.audit.chain): entry_hash = SHA-256(prev_hash || SHA-256(canonical(row))), in id order.
access_log = Table(
    "access_log",
    metadata,
    Column("id", _RowId, primary_key=True, autoincrement=True),
    Column("at_us", BigInteger, nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("direction", String(8), nullable=False),
    Column("peer", String(200), nullable=False),
    Column("method", String(120), nullable=False),
    Column("purpose", String(64), nullable=False),
    Column("subjects", Text, nullable=False),  # space-separated resident codes
    Column("outcome", String(32), nullable=False),
    Column("prev_hash", LargeBinary(32), nullable=False),
    Column("entry_hash", LargeBinary(32), nullable=False),
)

# This node's own signed checkpoints of its access log, with the parent's countersignature once witnessed.
audit_checkpoint = Table(
    "audit_checkpoint",
    metadata,
    Column("id", _RowId, primary_key=True, autoincrement=True),
    Column("node", String(200), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("last_id", BigInteger, nullable=False),  # access_log.id of the entry at `size`
    Column("head", LargeBinary(32), nullable=False),
    Column("at_us", BigInteger, nullable=False),
    Column("signature", LargeBinary, nullable=False),
    Column("signer_cert", LargeBinary, nullable=False),  # PEM of the signing key's certificate
    Column("witness", String(200), nullable=False, default=""),
    Column("witnessed_us", BigInteger, nullable=True),
    Column("countersignature", LargeBinary, nullable=True),
    Column("witness_cert", LargeBinary, nullable=True),
)

# Prefecture and center: the children's checkpoints this node verified and countersigned.
audit_witnessed = Table(
    "audit_witnessed",
    metadata,
    Column("id", _RowId, primary_key=True, autoincrement=True),
    Column("child", String(200), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("head", LargeBinary(32), nullable=False),
    Column("at_us", BigInteger, nullable=False),
    Column("signature", LargeBinary, nullable=False),
    Column("signer_cert", LargeBinary, nullable=False),
    Column("witness", String(200), nullable=False),
    Column("witnessed_us", BigInteger, nullable=False),
    Column("countersignature", LargeBinary, nullable=False),
    Column("witness_cert", LargeBinary, nullable=False),
    Column("rebased", Boolean, nullable=False, default=False),  # first one accepted after an acknowledged alert
)
Index("ix_audit_witnessed_child", audit_witnessed.c.child, audit_witnessed.c.id)

# Prefecture and center: children whose log stopped extending their witnessed checkpoint. While an alert is
# unacknowledged the child's checkpoints are refused; once acknowledged, its next checkpoint (sent from its
# first entry) is accepted as a new baseline.
audit_alert = Table(
    "audit_alert",
    metadata,
    Column("id", _RowId, primary_key=True, autoincrement=True),
    Column("child", String(200), nullable=False),
    Column("flagged_us", BigInteger, nullable=False),
    Column("reason", String(500), nullable=False),
    Column("acknowledged_us", BigInteger, nullable=True),
    Column("acknowledged_by", String(200), nullable=False, default=""),
    Column("note", String(200), nullable=False, default=""),
    Column("rebased_us", BigInteger, nullable=True),
)
Index("ix_audit_alert_child", audit_alert.c.child, audit_alert.c.id)

# Municipality: codes of its pool not yet assigned.
free_code = Table(
    "free_code",
    metadata,
    Column("id", _RowId, primary_key=True, autoincrement=True),  # codes are handed out in arrival order
    # Not indexed: the center issues every code once (issued_code), and a block is stored once (code_block).
    Column("resident_code", String(11), nullable=False),
    Column("block_id", String(40), nullable=False),
)

# Municipality: pools received; center: pools allocated. Idempotent on request_id.
code_block = Table(
    "code_block",
    metadata,
    Column("block_id", String(40), primary_key=True),
    Column("request_id", String(64), nullable=False, unique=True),
    Column("municipality", String(6), nullable=False),
    Column("count", Integer, nullable=False),
    Column("at_us", BigInteger, nullable=False),
)

# Center: every code ever issued, never issued twice.
issued_code = Table(
    "issued_code",
    metadata,
    Column("resident_code", String(11), primary_key=True),
    Column("block_id", String(40), nullable=False),
)
Index("ix_issued_code_block", issued_code.c.block_id)

# Center: every record provided to an agency (who received whose data, when, for what, which fields).
provision_log = Table(
    "provision_log",
    metadata,
    Column("id", _RowId, primary_key=True, autoincrement=True),
    Column("at_us", BigInteger, nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("agency", String(64), nullable=False),
    Column("purpose", String(64), nullable=False),
    Column("resident_code", String(11), nullable=False),
    Column("fields", String(100), nullable=False),  # space-separated PROVIDABLE_FIELDS
    Column("channel", String(8), nullable=False),  # lookup | search | bulk | feed
)
# Center: the provision log by resident code, for disclosure (提供状況開示). Filled behind the log in
# resident-code order, many entries per page (jukinet/storage/provision_index.py), up to the cursor below;
# readers scan the log's few entries past the cursor. No index on provision_log itself: a random insert
# per entry there halved bulk lookups (bench/provision.py, 1,000,000 items: 19.5k vs 41k items/s).
# Keyed by segment first (provision_log.id // provision_index.PROVISION_SEGMENT): a batch lands in the
# newest segment or two, so indexing it costs one pass over a segment, not over the whole log's index,
# however old the log grows (the domain keeps it at least 7 years). Its name is new with the segment column: an older
# database's `provision_key` is dropped once this one has caught up (center/provision_indexer.py).
provision_by_resident = Table(
    "provision_by_resident",
    metadata,
    Column("segment", BigInteger, primary_key=True, autoincrement=False),
    Column("resident_code", String(11), primary_key=True),
    Column("provision_id", BigInteger, primary_key=True, autoincrement=False),
    sqlite_with_rowid=False,
)
provision_by_resident_cursor = Table(
    "provision_by_resident_cursor",
    metadata,
    Column("id", SmallInteger, primary_key=True, autoincrement=False),  # the one row: 1
    Column("indexed_through", BigInteger, nullable=False),  # provision_log.id of the last entry indexed
)

# Center: 住民票コード the network holds but should not (jukinet/storage/code_checks.py): never issued by the
# center, or retired by a code change and still registered as active elsewhere. One row per (code, kind);
# the relay applies such changes anyway (refusing one would block its municipality's queue): operators
# reconcile them from this list (jukinet codes anomalies) and record what they did (jukinet codes resolve).
code_anomaly = Table(
    "code_anomaly",
    metadata,
    Column("id", _RowId, primary_key=True, autoincrement=True),
    Column("detected_us", BigInteger, nullable=False),
    Column("resident_code", String(11), nullable=False),
    Column("kind", String(16), nullable=False),  # unissued | retired_in_use
    Column("municipality", String(6), nullable=False),  # where the code is (or was first) registered
    Column("origin", String(6), nullable=False),  # the event that brought it to the operator's attention
    Column("seq", BigInteger, nullable=False),
    Column("detail", String(300), nullable=False),
    Column("replaced_by", String(11), nullable=False, server_default=""),  # retired_in_use: the current code
    # Set once an operator has reconciled it (jukinet codes resolve): who, when, what was done.
    Column("resolved_us", BigInteger, nullable=True),
    Column("resolved_by", String(200), nullable=False, server_default=""),
    Column("resolution", String(300), nullable=False, server_default=""),
    UniqueConstraint("resident_code", "kind", name="uq_code_anomaly_code_kind"),
)
# Center: event.id of the last event whose codes were checked.
code_check_cursor = Table(
    "code_check_cursor",
    metadata,
    Column("id", SmallInteger, primary_key=True, autoincrement=False),  # the one row: 1
    Column("checked_through", BigInteger, nullable=False),
)

# Center: change-feed subscribers (agency, purpose) and the items delivered to them, numbered per subscriber.
feed_subscription = Table(
    "feed_subscription",
    metadata,
    Column("agency", String(64), primary_key=True),
    Column("purpose", String(64), primary_key=True),
    Column("start_event_id", BigInteger, nullable=False),  # the feed holds events after this one
    Column("created_us", BigInteger, nullable=False),
)
feed_item = Table(
    "feed_item",
    metadata,
    Column("agency", String(64), primary_key=True),
    Column("purpose", String(64), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("event_id", BigInteger, nullable=False),
)

# Operator switches that must survive a restart (e.g. the emergency cut-off).
node_flag = Table(
    "node_flag",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("value", String(200), nullable=False),
    Column("at_us", BigInteger, nullable=False),
)
