//! The `Order` aggregate: its events, its state and the commands that decide them.

use eventfold::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Placed and open: lines can be added; it can be paid or cancelled.
    #[default]
    Placed,
    /// Paid: closed for changes.
    Paid,
    /// Cancelled before it was paid: closed for changes.
    Cancelled,
}

impl Status {
    /// The name stored in the master row, the replica and the projection.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Placed => "placed",
            Status::Paid => "paid",
            Status::Cancelled => "cancelled",
        }
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// The article.
    pub sku: String,
    /// How many, at least 1.
    pub quantity: u32,
    /// The price of one, in cents.
    pub unit_price_cents: i64,
}

impl Line {
    /// `quantity × unit_price_cents`.
    pub fn amount_cents(&self) -> i64 {
        i64::from(self.quantity) * self.unit_price_cents
    }
}

/// An order: who placed it, its lines and its status, folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Order {
    /// Who placed it.
    pub customer: String,
    /// Its lines, in the order they were added.
    pub lines: Vec<Line>,
    /// Where it is in its life.
    pub status: Status,
}

/// What happens to an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OrderEvent {
    /// The order was placed (its first event).
    Placed {
        /// Who placed it.
        customer: String,
    },
    /// A line was added.
    LineAdded(Line),
    /// The order was paid in full.
    Paid {
        /// What was paid, in cents: the order's total.
        amount_cents: i64,
    },
    /// The order was cancelled before it was paid.
    Cancelled {
        /// Why, as the customer said it (may be empty).
        reason: String,
    },
}

impl Aggregate for Order {
    const TYPE: &'static str = "Order";
    type Id = Uuid;
    type Event = OrderEvent;

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Placed { customer } => self.customer.clone_from(customer),
            OrderEvent::LineAdded(line) => self.lines.push(line.clone()),
            OrderEvent::Paid { .. } => self.status = Status::Paid,
            OrderEvent::Cancelled { .. } => self.status = Status::Cancelled,
        }
    }
}

/// Most of one article on one line: a typo guard, not a business rule.
pub const MAX_QUANTITY: u32 = 10_000;

/// Why a command was refused. Nothing is recorded when a command is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// `place` without a customer.
    #[error("customer must not be empty")]
    EmptyCustomer,
    /// `add_line` without an article.
    #[error("sku must not be empty")]
    EmptySku,
    /// `add_line` with a quantity of 0 or above [`MAX_QUANTITY`].
    #[error("quantity must be between 1 and {MAX_QUANTITY}, got {0}")]
    Quantity(u32),
    /// `add_line` with a negative price.
    #[error("unit_price_cents must not be negative, got {0}")]
    NegativePrice(i64),
    /// A change to an order that is paid or cancelled.
    #[error("order is {}, not placed: it cannot change any more", .0.as_str())]
    Closed(Status),
    /// `pay` of an order without lines.
    #[error("order has no lines to pay for")]
    NoLines,
    /// `pay` of another amount than the total.
    #[error("amount_cents {paid} does not match the order's total {total}")]
    WrongAmount {
        /// The total of the order.
        total: i64,
        /// What the command offered.
        paid: i64,
    },
}

impl Order {
    /// The command that places an order: its creation event.
    pub fn place(customer: &str) -> Result<OrderEvent, CommandError> {
        let customer = customer.trim();
        if customer.is_empty() {
            return Err(CommandError::EmptyCustomer);
        }
        Ok(OrderEvent::Placed {
            customer: customer.to_owned(),
        })
    }

    /// The sum of the lines, in cents.
    pub fn total_cents(&self) -> i64 {
        self.lines.iter().map(Line::amount_cents).sum()
    }

    fn open(&self) -> Result<(), CommandError> {
        match self.status {
            Status::Placed => Ok(()),
            closed => Err(CommandError::Closed(closed)),
        }
    }

    /// Adds a line to an open order.
    pub fn add_line(
        &self,
        sku: &str,
        quantity: u32,
        unit_price_cents: i64,
    ) -> Result<OrderEvent, CommandError> {
        self.open()?;
        let sku = sku.trim();
        if sku.is_empty() {
            return Err(CommandError::EmptySku);
        }
        if quantity == 0 || quantity > MAX_QUANTITY {
            return Err(CommandError::Quantity(quantity));
        }
        if unit_price_cents < 0 {
            return Err(CommandError::NegativePrice(unit_price_cents));
        }
        Ok(OrderEvent::LineAdded(Line {
            sku: sku.to_owned(),
            quantity,
            unit_price_cents,
        }))
    }

    /// Pays an open order with lines, in full.
    pub fn pay(&self, amount_cents: i64) -> Result<OrderEvent, CommandError> {
        self.open()?;
        if self.lines.is_empty() {
            return Err(CommandError::NoLines);
        }
        let total = self.total_cents();
        if amount_cents != total {
            return Err(CommandError::WrongAmount {
                total,
                paid: amount_cents,
            });
        }
        Ok(OrderEvent::Paid { amount_cents })
    }

    /// Cancels an open order (a paid one would need a refund, which this example leaves
    /// out).
    pub fn cancel(&self, reason: &str) -> Result<OrderEvent, CommandError> {
        self.open()?;
        Ok(OrderEvent::Cancelled {
            reason: reason.trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventfold::Root;

    fn placed() -> Root<Order> {
        Root::new(Order::place("ada").unwrap())
    }

    #[test]
    fn an_order_is_placed_filled_and_paid() {
        let mut order = placed();
        order.trigger(order.add_line("tea", 2, 350).unwrap());
        order.trigger(order.add_line("cup", 1, 900).unwrap());
        assert_eq!(order.total_cents(), 1600);
        assert_eq!(
            order.pay(1500),
            Err(CommandError::WrongAmount {
                total: 1600,
                paid: 1500
            })
        );
        order.trigger(order.pay(1600).unwrap());
        assert_eq!((order.status, order.version()), (Status::Paid, 4));
        assert_eq!(
            order.add_line("tea", 1, 350),
            Err(CommandError::Closed(Status::Paid))
        );
        assert_eq!(order.cancel(""), Err(CommandError::Closed(Status::Paid)));
    }

    #[test]
    fn bad_commands_are_refused_with_their_reason() {
        assert_eq!(Order::place("  "), Err(CommandError::EmptyCustomer));
        let order = placed();
        assert_eq!(order.pay(0), Err(CommandError::NoLines));
        assert_eq!(order.add_line(" ", 1, 1), Err(CommandError::EmptySku));
        assert_eq!(order.add_line("tea", 0, 1), Err(CommandError::Quantity(0)));
        assert_eq!(
            order.add_line("tea", MAX_QUANTITY + 1, 1),
            Err(CommandError::Quantity(MAX_QUANTITY + 1))
        );
        assert_eq!(
            order.add_line("tea", 1, -5),
            Err(CommandError::NegativePrice(-5))
        );
        let mut cancelled = placed();
        cancelled.trigger(cancelled.cancel(" changed my mind ").unwrap());
        assert_eq!(cancelled.status, Status::Cancelled);
        assert_eq!(
            cancelled.pending_events().last().map(|e| &e.event),
            Some(&OrderEvent::Cancelled {
                reason: "changed my mind".into()
            })
        );
        assert_eq!(
            cancelled.cancel(""),
            Err(CommandError::Closed(Status::Cancelled))
        );
    }
}
