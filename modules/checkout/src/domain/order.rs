//! An order and how one is placed: its lines priced from the price list checkout holds,
//! in one currency, with a total that fits.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use kernel::{Currency, Money, OrderId, Quantity, Sku};
use serde::{Deserialize, Serialize};

use super::status::{OrderStatus, StatusReason};

/// Where an order ships.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct Address {
    pub(crate) name: String,
    pub(crate) line1: String,
    pub(crate) line2: Option<String>,
    pub(crate) city: String,
    pub(crate) postal_code: String,
    /// ISO 3166-1 alpha-2, upper case.
    pub(crate) country: String,
}

/// One priced line of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    pub(crate) sku: Sku,
    pub(crate) quantity: Quantity,
    pub(crate) unit_price: Money,
}

/// An order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Order {
    pub(crate) id: OrderId,
    pub(crate) status: OrderStatus,
    pub(crate) status_reason: Option<StatusReason>,
    /// Who placed it (the `sub` of their token); only they, and staff, may see it.
    pub(crate) customer_id: String,
    pub(crate) customer_email: String,
    pub(crate) shipping_address: Address,
    pub(crate) payment_token: String,
    /// The sum of its lines, in the one currency of all of them.
    pub(crate) total: Money,
    pub(crate) lines: Vec<Line>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

/// What a customer asks for: the items (one per sku) and where and how to pay and ship.
#[derive(Debug, Clone)]
pub(crate) struct NewOrder {
    /// The customer placing it: the `sub` of their token.
    pub(crate) customer_id: String,
    pub(crate) customer_email: String,
    pub(crate) items: Vec<(Sku, Quantity)>,
    pub(crate) shipping_address: Address,
    pub(crate) payment_token: String,
}

/// The most items one order may hold.
pub(crate) const MAX_ITEMS: usize = 100;

/// Why one field of an order request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("must not be blank")]
    Blank,
    #[error("must be at most {0} characters")]
    TooLong(usize),
    #[error("must be an email address")]
    NotAnEmail,
    #[error("must be an ISO 3166-1 alpha-2 code such as GB")]
    NotACountry,
    #[error("must hold 1 to {MAX_ITEMS} items")]
    ItemCount,
    #[error("appears more than once")]
    Duplicate,
}

impl kernel::ErrorCode for RequestError {
    fn code(&self) -> &'static str {
        match self {
            RequestError::Blank => "required",
            RequestError::TooLong(_) | RequestError::ItemCount => "length",
            RequestError::NotAnEmail => "email",
            RequestError::NotACountry => "invalid_format",
            RequestError::Duplicate => "duplicate",
        }
    }
}

/// A line of text of an address: trimmed, not blank, at most `max` characters.
pub(crate) fn address_text(raw: &str, max: usize) -> Result<String, RequestError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(RequestError::Blank);
    }
    if trimmed.chars().count() > max {
        return Err(RequestError::TooLong(max));
    }
    Ok(trimmed.to_owned())
}

/// The optional second line of an address: blank is no line.
pub(crate) fn address_line2(raw: &str) -> Result<Option<String>, RequestError> {
    match address_text(raw, 200) {
        Ok(line) => Ok(Some(line)),
        Err(RequestError::Blank) => Ok(None),
        Err(e) => Err(e),
    }
}

/// ISO 3166-1 alpha-2, upper case, such as `GB`.
pub(crate) fn country(raw: &str) -> Result<String, RequestError> {
    if raw.len() == 2 && raw.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(raw.to_owned())
    } else {
        Err(RequestError::NotACountry)
    }
}

/// An email address as the HTML standard and the `validator` crate define one, at most
/// 254 characters.
pub(crate) fn email(raw: &str) -> Result<String, RequestError> {
    use validator::ValidateEmail;
    if raw.chars().count() > 254 {
        return Err(RequestError::TooLong(254));
    }
    if !raw.validate_email() {
        return Err(RequestError::NotAnEmail);
    }
    Ok(raw.to_owned())
}

/// The payment provider's token, as given: not blank, at most 200 characters.
pub(crate) fn payment_token(raw: &str) -> Result<String, RequestError> {
    address_text(raw, 200).map(|_| raw.to_owned())
}

/// How many items an order may hold.
pub(crate) fn item_count(n: usize) -> Result<usize, RequestError> {
    if (1..=MAX_ITEMS).contains(&n) {
        Ok(n)
    } else {
        Err(RequestError::ItemCount)
    }
}

/// Adds an item unless its sku is already asked for: one line per sku.
pub(crate) fn add_item(
    items: &mut Vec<(Sku, Quantity)>,
    sku: Sku,
    quantity: Quantity,
) -> Result<(), RequestError> {
    if items.iter().any(|(s, _)| *s == sku) {
        return Err(RequestError::Duplicate);
    }
    items.push((sku, quantity));
    Ok(())
}

/// The prices an order is placed with: checkout's price list, for the skus it asks for.
pub(crate) type PriceList = HashMap<Sku, Money>;

/// Why an order cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PlaceError {
    /// The price list has no price for these items (their index, and sku).
    UnknownSkus(Vec<(usize, Sku)>),
    /// The items are priced in more than one currency (each once, in code order).
    MixedCurrencies(Vec<Currency>),
    /// A line or the total is above what [`Money`] holds.
    TotalTooLarge,
    /// No items at all.
    NoItems,
}

impl Order {
    /// Prices `new` from `prices` into a `pending` order placed `now` under `id`: every
    /// item must have a price, all in one currency, and no line nor the total may
    /// overflow. Unknown skus are all reported together, before anything else.
    pub(crate) fn place(
        id: OrderId,
        new: NewOrder,
        prices: &PriceList,
        now: DateTime<Utc>,
    ) -> Result<Order, PlaceError> {
        let unknown: Vec<(usize, Sku)> = new
            .items
            .iter()
            .enumerate()
            .filter(|(_, (sku, _))| !prices.contains_key(sku))
            .map(|(i, (sku, _))| (i, sku.clone()))
            .collect();
        if !unknown.is_empty() {
            return Err(PlaceError::UnknownSkus(unknown));
        }
        let mut currencies: Vec<Currency> = new
            .items
            .iter()
            .map(|(sku, _)| prices[sku].currency())
            .collect();
        currencies.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        currencies.dedup();
        let currency = match currencies.as_slice() {
            [] => return Err(PlaceError::NoItems),
            [one] => *one,
            _ => return Err(PlaceError::MixedCurrencies(currencies)),
        };
        let mut total = Money::zero(currency);
        let mut lines = Vec::with_capacity(new.items.len());
        for (sku, quantity) in new.items {
            let unit_price = prices[&sku];
            let line = unit_price
                .checked_mul(quantity.get())
                .map_err(|_| PlaceError::TotalTooLarge)?;
            total = total
                .checked_add(line)
                .map_err(|_| PlaceError::TotalTooLarge)?;
            lines.push(Line {
                sku,
                quantity,
                unit_price,
            });
        }
        Ok(Order {
            id,
            status: OrderStatus::Pending,
            status_reason: None,
            customer_id: new.customer_id,
            customer_email: new.customer_email,
            shipping_address: new.shipping_address,
            payment_token: new.payment_token,
            total,
            lines,
            created_at: now,
            updated_at: now,
        })
    }
}

/// Tests: `customer` asks for `items` (sku, quantity), with one London address and a
/// card token.
#[cfg(test)]
pub(crate) fn asked_by(customer: &str, items: &[(&str, i64)]) -> NewOrder {
    NewOrder {
        customer_id: customer.into(),
        customer_email: "ada@example.com".into(),
        items: items
            .iter()
            .map(|(s, q)| {
                (
                    Sku::parse(s).expect("a sku"),
                    Quantity::new(*q).expect("a quantity"),
                )
            })
            .collect(),
        shipping_address: Address {
            name: "Ada".into(),
            line1: "1 Road".into(),
            line2: None,
            city: "London".into(),
            postal_code: "N1".into(),
            country: "GB".into(),
        },
        payment_token: "tok_visa".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sku(s: &str) -> Sku {
        Sku::parse(s).expect("a sku")
    }

    fn money(minor: i64, currency: &str) -> Money {
        Money::new(minor, Currency::parse(currency).expect("a currency")).expect("money")
    }

    fn qty(n: i64) -> Quantity {
        Quantity::new(n).expect("a quantity")
    }

    fn asking(items: &[(&str, i64)]) -> NewOrder {
        asked_by("ada", items)
    }

    fn list(prices: &[(&str, i64, &str)]) -> PriceList {
        prices
            .iter()
            .map(|(s, minor, c)| (sku(s), money(*minor, c)))
            .collect()
    }

    fn place(items: &[(&str, i64)], prices: &[(&str, i64, &str)]) -> Result<Order, PlaceError> {
        let now = DateTime::from_timestamp(1_000, 0).expect("a time");
        Order::place(OrderId::new(), asking(items), &list(prices), now)
    }

    #[test]
    fn an_order_is_priced_line_by_line_from_the_price_list() {
        let order = place(
            &[("TEA-1", 2), ("CUP-1", 3)],
            &[
                ("TEA-1", 450, "EUR"),
                ("CUP-1", 1_000, "EUR"),
                ("POT-1", 9, "USD"),
            ],
        )
        .expect("placed");
        assert_eq!(order.status, OrderStatus::Pending);
        assert_eq!(order.status_reason, None);
        assert_eq!(order.total, money(3_900, "EUR"));
        assert_eq!(
            order.lines,
            vec![
                Line {
                    sku: sku("TEA-1"),
                    quantity: qty(2),
                    unit_price: money(450, "EUR")
                },
                Line {
                    sku: sku("CUP-1"),
                    quantity: qty(3),
                    unit_price: money(1_000, "EUR")
                },
            ]
        );
        assert_eq!(order.created_at, order.updated_at);
    }

    #[test]
    fn refusals() {
        let max = Money::MAX_MINOR;
        type Row<'a> = (
            &'a str,
            &'a [(&'a str, i64)],
            &'a [(&'a str, i64, &'a str)],
            PlaceError,
        );
        let table: &[Row<'_>] = &[
            (
                "every unknown sku is named with its index",
                &[("TEA-1", 1), ("NOPE-1", 1), ("NOPE-2", 1)],
                &[("TEA-1", 450, "EUR")],
                PlaceError::UnknownSkus(vec![(1, sku("NOPE-1")), (2, sku("NOPE-2"))]),
            ),
            (
                "unknown skus come before mixed currencies",
                &[("TEA-1", 1), ("CUP-1", 1), ("NOPE-1", 1)],
                &[("TEA-1", 450, "EUR"), ("CUP-1", 450, "USD")],
                PlaceError::UnknownSkus(vec![(2, sku("NOPE-1"))]),
            ),
            (
                "one currency per order, each named once in code order",
                &[("TEA-1", 1), ("CUP-1", 1), ("POT-1", 1)],
                &[
                    ("TEA-1", 1, "USD"),
                    ("CUP-1", 1, "EUR"),
                    ("POT-1", 1, "USD"),
                ],
                PlaceError::MixedCurrencies(vec![
                    Currency::parse("EUR").expect("EUR"),
                    Currency::parse("USD").expect("USD"),
                ]),
            ),
            (
                "a line above what money holds",
                &[("TEA-1", 2)],
                &[("TEA-1", max, "EUR")],
                PlaceError::TotalTooLarge,
            ),
            (
                "a total above what money holds, each line fitting",
                &[("TEA-1", 1), ("CUP-1", 1)],
                &[("TEA-1", max, "EUR"), ("CUP-1", 1, "EUR")],
                PlaceError::TotalTooLarge,
            ),
            ("no items", &[], &[("TEA-1", 1, "EUR")], PlaceError::NoItems),
        ];
        for (what, items, prices, refused) in table {
            assert_eq!(place(items, prices).as_ref(), Err(refused), "{what}");
        }
    }

    #[test]
    fn the_fields_of_a_request() {
        use RequestError::*;
        let long = "x".repeat(201);
        type Case<'a> = (
            &'a str,
            Result<String, RequestError>,
            Result<String, RequestError>,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "address text trimmed",
                address_text("  Ada ", 200),
                Ok("Ada".into()),
            ),
            ("address text blank", address_text(" \t ", 200), Err(Blank)),
            (
                "address text 200 chars",
                address_text(&"é".repeat(200), 200),
                Ok("é".repeat(200)),
            ),
            (
                "address text too long",
                address_text(&long, 200),
                Err(TooLong(200)),
            ),
            ("country", country("GB"), Ok("GB".into())),
            ("country lower case", country("gb"), Err(NotACountry)),
            ("country three letters", country("GBR"), Err(NotACountry)),
            ("country non-ascii", country("Éx"), Err(NotACountry)),
            (
                "email",
                email("ada@example.com"),
                Ok("ada@example.com".into()),
            ),
            (
                "email without at",
                email("ada.example.com"),
                Err(NotAnEmail),
            ),
            ("email empty", email(""), Err(NotAnEmail)),
            (
                "email too long",
                email(&format!("{}@example.com", "a".repeat(243))),
                Err(TooLong(254)),
            ),
            (
                "token kept as given",
                payment_token(" tok_visa"),
                Ok(" tok_visa".into()),
            ),
            ("token blank", payment_token("  "), Err(Blank)),
            ("token too long", payment_token(&long), Err(TooLong(200))),
        ];
        for (name, got, want) in cases {
            assert_eq!(got, want, "{name}");
        }
        assert_eq!(address_line2("   "), Ok(None));
        assert_eq!(address_line2(" Flat 2 "), Ok(Some("Flat 2".into())));
        assert_eq!(address_line2(&long), Err(TooLong(200)));
        for (n, ok) in [
            (0, false),
            (1, true),
            (MAX_ITEMS, true),
            (MAX_ITEMS + 1, false),
        ] {
            assert_eq!(item_count(n).is_ok(), ok, "{n} items");
        }
        let mut items = Vec::new();
        assert_eq!(add_item(&mut items, sku("TEA-1"), qty(1)), Ok(()));
        assert_eq!(add_item(&mut items, sku("TEA-2"), qty(1)), Ok(()));
        assert_eq!(add_item(&mut items, sku("TEA-1"), qty(3)), Err(Duplicate));
        assert_eq!(items, [(sku("TEA-1"), qty(1)), (sku("TEA-2"), qty(1))]);
    }

    #[test]
    fn a_total_of_exactly_the_most_money_holds_is_placed() {
        let max = Money::MAX_MINOR;
        let order = place(
            &[("TEA-1", 1), ("CUP-1", 1)],
            &[("TEA-1", max - 1, "EUR"), ("CUP-1", 1, "EUR")],
        )
        .expect("placed");
        assert_eq!(order.total.minor(), max);
    }
}
