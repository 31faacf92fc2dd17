//! Order rules, free of I/O: line quantity buckets and the status derived from them.

/// Quantities of one line. They always add up to `ordered`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineQty {
    pub ordered: i64,
    pub allocated: i64,
    pub shipped: i64,
    pub backordered: i64,
    pub cancelled: i64,
    pub returned: i64,
}

impl LineQty {
    pub fn new(ordered: i64) -> Self {
        Self {
            ordered,
            ..Self::default()
        }
    }

    /// Not yet allocated, backordered, shipped, cancelled or returned.
    pub fn open(&self) -> i64 {
        self.ordered
            - self.allocated
            - self.shipped
            - self.backordered
            - self.cancelled
            - self.returned
    }

    pub fn is_consistent(&self) -> bool {
        self.open() >= 0
            && [
                self.allocated,
                self.shipped,
                self.backordered,
                self.cancelled,
                self.returned,
            ]
            .iter()
            .all(|q| *q >= 0)
    }

    /// Allocates `allocated` units and backorders `backordered` of what is open.
    pub fn allocate(&mut self, allocated: i64, backordered: i64) -> Result<(), String> {
        // Re-allocation replaces the previous decision for what is not shipped.
        let pool = self.open() + self.allocated + self.backordered;
        if allocated < 0 || backordered < 0 || allocated + backordered > pool {
            return Err(format!(
                "cannot allocate {allocated} and backorder {backordered}: {pool} units are open"
            ));
        }
        self.allocated = allocated;
        self.backordered = backordered;
        Ok(())
    }

    /// Ships everything allocated.
    pub fn ship_allocated(&mut self) {
        self.shipped += self.allocated;
        self.allocated = 0;
    }

    /// Cancels what no shipment holds (open and backordered units); allocated units stay
    /// until their shipment is stopped. Returns how many units were cancelled.
    pub fn cancel_unallocated(&mut self) -> i64 {
        let n = self.open() + self.backordered;
        self.cancelled += n;
        self.backordered = 0;
        n
    }

    /// Cancels everything not shipped.
    pub fn cancel_unshipped(&mut self) {
        self.cancelled += self.open() + self.allocated + self.backordered;
        self.allocated = 0;
        self.backordered = 0;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Accepted,
    Allocated,
    PartiallyShipped,
    Shipped,
    Backordered,
    Cancelled,
    Failed,
    Returned,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Allocated => "allocated",
            Self::PartiallyShipped => "partially_shipped",
            Self::Shipped => "shipped",
            Self::Backordered => "backordered",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
            Self::Returned => "returned",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Accepted,
            Self::Allocated,
            Self::PartiallyShipped,
            Self::Shipped,
            Self::Backordered,
            Self::Cancelled,
            Self::Failed,
            Self::Returned,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }

    /// The order's status from its lines (a failed order stays failed).
    pub fn derive(lines: &[LineQty]) -> Self {
        let sum = |f: fn(&LineQty) -> i64| lines.iter().map(f).sum::<i64>();
        let ordered = sum(|l| l.ordered);
        let shipped = sum(|l| l.shipped);
        let cancelled = sum(|l| l.cancelled);
        let returned = sum(|l| l.returned);
        let allocated = sum(|l| l.allocated);
        let backordered = sum(|l| l.backordered);
        if ordered > 0 && cancelled == ordered {
            Self::Cancelled
        } else if returned > 0 && returned + cancelled == ordered {
            Self::Returned
        } else if shipped > 0 && shipped + cancelled + returned == ordered {
            Self::Shipped
        } else if shipped > 0 {
            Self::PartiallyShipped
        } else if backordered > 0 {
            Self::Backordered
        } else if allocated > 0 {
            Self::Allocated
        } else {
            Self::Accepted
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_add_up_through_the_lifecycle() {
        let mut l = LineQty::new(5);
        assert_eq!(l.open(), 5);
        l.allocate(3, 2).unwrap();
        assert!(l.is_consistent());
        assert_eq!(Status::derive(&[l]), Status::Backordered);
        l.ship_allocated();
        assert_eq!((l.shipped, l.allocated, l.open()), (3, 0, 0));
        assert_eq!(Status::derive(&[l]), Status::PartiallyShipped);
        l.cancel_unshipped();
        assert_eq!((l.cancelled, l.backordered), (2, 0));
        assert!(l.is_consistent());
        assert_eq!(Status::derive(&[l]), Status::Shipped);
    }

    #[test]
    fn allocated_units_wait_for_their_shipment_to_stop() {
        let mut l = LineQty::new(5);
        l.allocate(2, 2).unwrap();
        assert_eq!(l.cancel_unallocated(), 3, "one open and two backordered");
        assert_eq!((l.allocated, l.backordered, l.cancelled), (2, 0, 3));
        assert!(l.is_consistent());
        assert_eq!(Status::derive(&[l]), Status::Allocated);
        l.ship_allocated();
        assert_eq!(Status::derive(&[l]), Status::Shipped);
        assert_eq!(l.cancel_unallocated(), 0);
    }

    #[test]
    fn over_allocation_is_refused() {
        let mut l = LineQty::new(2);
        assert!(l.allocate(3, 0).is_err());
        assert!(l.allocate(-1, 0).is_err());
        assert_eq!(l, LineQty::new(2));
    }

    #[test]
    fn fully_cancelled_is_cancelled() {
        let mut l = LineQty::new(2);
        l.cancel_unshipped();
        assert_eq!(Status::derive(&[l]), Status::Cancelled);
    }
}
