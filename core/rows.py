"""Model instances from the rows of hand-written statements (``UPDATE ... RETURNING``, CTEs) on
the hot paths, read as the ORM would read them: one round trip where the ORM needs a transaction
of several (docs/benchmarks.md, "Cost per photo, third round")."""

from django.db import connections
from django.db.models import Model


def hand_written_sql(using: str = "default") -> bool:
    """Whether the hot paths' hand-written statements apply: PostgreSQL's data-modifying CTEs and
    RETURNING. The embedded SQLite stand-in (devstack, the fallback smoke) takes the ORM paths."""
    return connections[using].vendor == "postgresql"


def columns(model: type[Model], alias: str) -> str:
    """Every concrete column of ``model`` under ``alias``, in the model's order (for SELECT)."""
    quote = connections["default"].ops.quote_name
    return ", ".join(f"{alias}.{quote(field.column)}" for field in model._meta.concrete_fields)


def model_from_row(model: type[Model], values, *, using: str = "default") -> Model:
    """An instance of ``model`` from its columns as ``columns`` lists them, each through the
    converters the ORM applies when it reads that field (JSON decoded, and so on)."""
    connection = connections[using]
    fields = model._meta.concrete_fields
    if len(values) != len(fields):
        raise ValueError(f"{model.__name__}: {len(values)} values for {len(fields)} columns")
    converted = []
    for field, value in zip(fields, values, strict=True):
        col = field.cached_col
        for converter in connection.ops.get_db_converters(col) + col.get_db_converters(connection):
            value = converter(value, col, connection)
        converted.append(value)
    return model.from_db(using, [field.attname for field in fields], converted)
