//! Which LightRate middleware decided a request, so that a request is decided once by each
//! *family* of middleware (a layer, its clones and the per-route layers it declares: one
//! policy), and a second family stacked on the same request (a per-organisation layer under a
//! per-user one, each on its own limiter) joins the decision instead of being skipped.
//!
//! A family marks the requests it decided with a zero-sized mark of its own (one of
//! [`MARKS`] types, so that marking allocates nothing): the mark says "decided here", and a
//! request that another family decided is decided again by this one, with its own limits.
//! All or nothing across families: a family that admitted a request records what it took
//! ([`Charges`], in the request's extensions) once it knows another family is stacked under
//! it, and the family that refuses gives those tokens back. It learns so from the first
//! refusal of the family under it (which sees its mark), so that the first request refused
//! that way may keep the tokens the outer family took; every later one gives them back.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::view::RequestView;
use crate::limiter::Taken;
use crate::Limiter;

/// How many families can hold a zero-sized mark at once; others record [`Charges`] always.
pub(crate) const MARKS: usize = 16;

/// The mark of the family in slot `K`.
#[derive(Clone, Copy, Debug, Default)]
struct Mark<const K: usize>;

/// The families holding a mark, by slot.
static SLOTS: Mutex<[Option<Weak<Family>>; MARKS]> = Mutex::new([const { None }; MARKS]);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The slots whose family lives (a bit each).
static OCCUPIED: AtomicU32 = AtomicU32::new(0);

/// Whether any family records its charges (until then, no refusal looks for them).
static ANY_RECORDS: AtomicBool = AtomicBool::new(false);

/// One family of middleware: its mark, and whether another family is stacked under it.
#[derive(Debug)]
pub(crate) struct Family {
    id: u64,
    mark: Option<usize>,
    /// Whether it records what it takes ([`Charges`]) for a family under it to give back.
    records: AtomicBool,
    /// The slots of the families this one told to record (a bit each).
    told: AtomicU32,
}

impl Family {
    /// A new family, with a free mark if there is one.
    pub(crate) fn new() -> Arc<Family> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let mut slots = crate::sync::lock(&SLOTS);
        let free = slots
            .iter()
            .position(|slot| slot.as_ref().is_none_or(|f| f.strong_count() == 0));
        let family = Arc::new(Family {
            id,
            mark: free,
            // Without a mark, it tells its requests by its charges.
            records: AtomicBool::new(free.is_none()),
            told: AtomicU32::new(0),
        });
        match free {
            Some(slot) => {
                slots[slot] = Some(Arc::downgrade(&family));
                OCCUPIED.fetch_or(1 << slot, Ordering::Relaxed);
            }
            None => ANY_RECORDS.store(true, Ordering::Relaxed),
        }
        family
    }

    /// Marks `req` decided by this family; `false` if it was already.
    #[inline]
    pub(crate) fn claim<V: RequestView>(&self, req: &mut V::Request) -> bool {
        match self.mark {
            // The first family's mark inline: an app's one middleware takes no jump.
            Some(0) => V::insert_new(req, Mark::<0>),
            Some(k) => with_mark(k, InsertNew::<V>(req)),
            None => {
                let mut charges = V::with_extensions(req, |e| V::extension::<Charges>(e).cloned())
                    .unwrap_or_default();
                if charges.families.contains(&self.id) {
                    return false;
                }
                charges.families.push(self.id);
                V::insert_into(req, charges);
                true
            }
        }
    }

    /// Takes back the mark of a request this family turned out not to limit.
    #[inline]
    pub(crate) fn unclaim<V: RequestView>(&self, req: &mut V::Request) {
        match self.mark {
            Some(k) => with_mark(k, Remove::<V>(req)),
            None => {
                let charges = V::with_extensions(req, |e| V::extension::<Charges>(e).cloned());
                if let Some(mut charges) = charges {
                    charges.families.retain(|id| *id != self.id);
                    V::insert_into(req, charges);
                }
            }
        }
    }

    /// Whether this family decided the request whose extensions these are.
    #[inline]
    pub(crate) fn decided<V: RequestView>(&self, extensions: &V::Extensions) -> bool {
        match self.mark {
            Some(0) => V::contains::<Mark<0>>(extensions),
            Some(k) => with_mark(k, Contains::<V>(extensions)),
            None => {
                V::extension::<Charges>(extensions).is_some_and(|c| c.families.contains(&self.id))
            }
        }
    }

    /// Whether it records what its requests take.
    #[inline]
    pub(crate) fn records(&self) -> bool {
        self.records.load(Ordering::Relaxed)
    }

    /// Called by the family that refuses a request: gives back what the families that
    /// admitted it before took (if they recorded it), and tells those that did not record to
    /// record from now on. Costs two atomic loads while no other family lives.
    #[inline]
    pub(crate) fn refused<V: RequestView>(&self, extensions: &V::Extensions) {
        if let Some(charges) = self.foreign_charges::<V>(extensions) {
            charges.give_back();
        }
        self.tell::<V>(extensions);
    }

    /// Before a request's limits ask the source: what the families before took, to give back
    /// if the source refuses (the request's extensions are out of reach by then); and the
    /// families before told to record.
    #[inline]
    pub(crate) fn before_source<V: RequestView>(
        &self,
        extensions: &V::Extensions,
    ) -> Option<Charges> {
        self.tell::<V>(extensions);
        self.foreign_charges::<V>(extensions)
    }

    /// What the families before this one recorded for the request, if any family records.
    #[inline]
    fn foreign_charges<V: RequestView>(&self, extensions: &V::Extensions) -> Option<Charges> {
        if !ANY_RECORDS.load(Ordering::Relaxed) {
            return None;
        }
        V::extension::<Charges>(extensions)
            .filter(|c| !c.charges.is_empty())
            .cloned()
    }

    /// Tells the families before this one that did not record (their marks on the request)
    /// to record from now on.
    #[inline]
    fn tell<V: RequestView>(&self, extensions: &V::Extensions) {
        let mine = self.mark.map_or(0, |k| 1 << k);
        let others = OCCUPIED.load(Ordering::Relaxed) & !mine & !self.told.load(Ordering::Relaxed);
        if others != 0 {
            self.tell_the_others::<V>(extensions, others);
        }
    }

    /// Tells the families in `others` (a bit per slot) whose marks `extensions` hold to
    /// record their charges.
    #[cold]
    fn tell_the_others<V: RequestView>(&self, extensions: &V::Extensions, others: u32) {
        let slots = crate::sync::lock(&SLOTS);
        for (k, slot) in slots.iter().enumerate() {
            if others & (1 << k) == 0 || !with_mark(k, Contains::<V>(extensions)) {
                continue;
            }
            self.told.fetch_or(1 << k, Ordering::Relaxed);
            if let Some(other) = slot.as_ref().and_then(Weak::upgrade) {
                ANY_RECORDS.store(true, Ordering::Relaxed);
                if !other.records.swap(true, Ordering::Relaxed) {
                    tracing::debug!(
                        target: "lightrate::web",
                        "two LightRate middlewares limit the same requests: the outer one records what it takes, for the inner one to give back"
                    );
                }
            }
        }
    }

    /// Marks the request whose extensions these are decided by this family.
    pub(crate) fn claim_in<V: RequestView>(&self, extensions: &mut V::Extensions) {
        match self.mark {
            Some(k) => with_mark(k, InsertIn::<V>(extensions)),
            None => {
                let mut charges = V::extension::<Charges>(extensions)
                    .cloned()
                    .unwrap_or_default();
                if !charges.families.contains(&self.id) {
                    charges.families.push(self.id);
                    V::insert(extensions, charges);
                }
            }
        }
    }
}

impl Drop for Family {
    fn drop(&mut self) {
        if let Some(k) = self.mark {
            let mut slots = crate::sync::lock(&SLOTS);
            if slots[k].as_ref().is_some_and(|f| f.strong_count() == 0) {
                slots[k] = None;
                OCCUPIED.fetch_and(!(1 << k), Ordering::Relaxed);
            }
        }
    }
}

/// What the families that admitted a request took, so that a family that refuses it gives
/// it back: in the request's extensions once a family records. Also which families decided
/// it, for families without a mark.
#[derive(Clone, Debug, Default)]
pub(crate) struct Charges {
    families: Vec<u64>,
    charges: Vec<Charge>,
}

/// Tokens one limit of a request took.
#[derive(Clone, Debug)]
pub(crate) struct Charge {
    pub(crate) limiter: Limiter,
    pub(crate) user: Box<str>,
    pub(crate) slot: u32,
    pub(crate) cost: u64,
    pub(crate) taken: Taken,
}

impl Charges {
    /// Adds what a family took to the request whose extensions these are.
    pub(crate) fn record<V: RequestView>(
        extensions: &mut V::Extensions,
        charges: impl IntoIterator<Item = Charge>,
    ) {
        let mut all = V::extension::<Charges>(extensions)
            .cloned()
            .unwrap_or_default();
        all.charges.extend(charges);
        V::insert(extensions, all);
    }

    /// Adds charges.
    pub(crate) fn extend(&mut self, charges: impl IntoIterator<Item = Charge>) {
        self.charges.extend(charges);
    }

    /// Gives back everything recorded, for a request refused now.
    pub(crate) fn give_back(&self) {
        for charge in &self.charges {
            charge
                .limiter
                .give_back(&charge.user, charge.slot, charge.cost, charge.taken);
        }
    }
}

/// Something done with the mark of slot `K`.
trait WithMark {
    type Output;
    fn with<M: Clone + Default + Send + Sync + 'static>(self) -> Self::Output;
}

/// `what` with the mark of slot `k`.
#[inline]
fn with_mark<W: WithMark>(k: usize, what: W) -> W::Output {
    macro_rules! marks {
        ($($k:literal)*) => {
            match k {
                $($k => what.with::<Mark<$k>>(),)*
                _ => unreachable!("a mark slot is below MARKS"),
            }
        };
    }
    marks!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15)
}

struct InsertNew<'r, V: RequestView>(&'r mut V::Request);

impl<V: RequestView> WithMark for InsertNew<'_, V> {
    type Output = bool;
    #[inline]
    fn with<M: Clone + Default + Send + Sync + 'static>(self) -> bool {
        V::insert_new(self.0, M::default())
    }
}

struct InsertIn<'e, V: RequestView>(&'e mut V::Extensions);

impl<V: RequestView> WithMark for InsertIn<'_, V> {
    type Output = ();
    fn with<M: Clone + Default + Send + Sync + 'static>(self) {
        V::insert(self.0, M::default());
    }
}

struct Remove<'r, V: RequestView>(&'r mut V::Request);

impl<V: RequestView> WithMark for Remove<'_, V> {
    type Output = ();
    fn with<M: Clone + Default + Send + Sync + 'static>(self) {
        V::remove_from::<M>(self.0);
    }
}

struct Contains<'e, V: RequestView>(&'e V::Extensions);

impl<V: RequestView> WithMark for Contains<'_, V> {
    type Output = bool;
    #[inline]
    fn with<M: Clone + Default + Send + Sync + 'static>(self) -> bool {
        V::contains::<M>(self.0)
    }
}
