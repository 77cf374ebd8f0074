"""Money as integer micro-dollars, so that sums are exact in every database."""

from decimal import Decimal, InvalidOperation

MICROS_PER_USD = 1_000_000


def usd_to_micros(value: float | str | Decimal) -> int:
    """Convert dollars to micro-dollars, rounding half-up at the sixth decimal."""
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{value!r} is not an amount in USD") from None
    if not amount.is_finite():
        raise ValueError(f"{value!r} is not an amount in USD")
    return int((amount * MICROS_PER_USD).to_integral_value(rounding="ROUND_HALF_UP"))


def micros_to_usd(micros: int | None) -> Decimal | None:
    """Convert micro-dollars to dollars, or pass None through."""
    return None if micros is None else Decimal(micros) / MICROS_PER_USD
