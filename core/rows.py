"""Model instances from the rows of hand-written statements (``UPDATE ... RETURNING``, CTEs) on
the hot paths, read as the ORM would read them: one round trip where the ORM needs a transaction
of several (docs/benchmarks.md, "Cost per photo, third round")."""

from collections.abc import Collection

from django.db import connections
from django.db.models import Field, Model


def hand_written_sql(using: str = "default") -> bool:
    """Whether the hot paths' hand-written statements apply: PostgreSQL's data-modifying CTEs and
    RETURNING. The embedded SQLite stand-in (devstack, the fallback smoke) takes the ORM paths."""
    return connections[using].vendor == "postgresql"


def fields(model: type[Model], names: Collection[str] | None = None) -> list[Field]:
    """The concrete fields of ``model`` in its own order: all of them, or those whose attname is
    in ``names`` (Model.from_db takes a subset in that order)."""
    every = model._meta.concrete_fields
    return list(every) if names is None else [field for field in every if field.attname in names]


def columns(model: type[Model], alias: str, names: Collection[str] | None = None) -> str:
    """The columns of ``fields(model, names)`` under ``alias``, in that order (for SELECT)."""
    quote = connections["default"].ops.quote_name
    return ", ".join(f"{alias}.{quote(field.column)}" for field in fields(model, names))


def model_from_row(model: type[Model], values, *, names: Collection[str] | None = None, using: str = "default") -> Model:
    """An instance of ``model`` from the columns ``columns(model, alias, names)`` lists, each
    through the converters the ORM applies when it reads that field (JSON decoded, and so on);
    the fields not read are deferred."""
    connection = connections[using]
    read = fields(model, names)
    if len(values) != len(read):
        raise ValueError(f"{model.__name__}: {len(values)} values for {len(read)} columns")
    converted = []
    for field, value in zip(read, values, strict=True):
        col = field.cached_col
        for converter in connection.ops.get_db_converters(col) + col.get_db_converters(connection):
            value = converter(value, col, connection)
        converted.append(value)
    return model.from_db(using, [field.attname for field in read], converted)
