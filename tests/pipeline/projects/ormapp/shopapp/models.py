"""The application's current models (after revision 0002)."""

from sqlalchemy import Integer, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    full_name: Mapped[str] = mapped_column(Text)
    first_name: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_name: Mapped[str | None] = mapped_column(Text, nullable=True)


def database_url(env: dict[str, str]) -> str:
    """The application's own way of finding its database (what env.py uses)."""
    import importlib.util

    url = env["DATABASE_URL"]
    scheme, _, rest = url.partition("://")
    if scheme in ("postgres", "postgresql") and importlib.util.find_spec("psycopg") is not None:
        return "postgresql+psycopg://" + rest
    return url
