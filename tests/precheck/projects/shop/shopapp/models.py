"""The application's models (what env.py and the data migration import)."""

from sqlalchemy import CheckConstraint, ForeignKey, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Product(Base):
    __tablename__ = "products"
    __table_args__ = (CheckConstraint("stock >= 0", name="ck_products_stock"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str | None] = mapped_column(String(100), unique=True)
    stock: Mapped[int | None] = mapped_column(Integer)
    reserved_stock: Mapped[int | None] = mapped_column(Integer)


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_id: Mapped[int | None] = mapped_column(ForeignKey("products.id", name="fk_orders_product"))
    quantity: Mapped[int | None] = mapped_column(Integer)
    note: Mapped[str] = mapped_column(String(200), nullable=False)
