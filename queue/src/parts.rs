//! One application state for every job: each job names the part it needs.
//!
//! A runner is built with the application's state (`Runner::builder(state)`).
//! A job takes `&Part` for the part it needs, or nothing. The runner gives
//! it the state itself when `Part` is the state's type, nothing when the
//! job takes nothing, and otherwise the part the application declared with
//! [`FromState`] and registered (`#[derive(FromState)]` on the state does
//! both for each field). `build()` refuses a job whose part the state
//! cannot give.

use std::any::{Any, TypeId};

/// A part of the application's state `S` that jobs can take as `&Self`,
/// declared once per part (in the manner of axum's `FromRef`).
///
/// `#[derive(FromState)]` on the state's struct implements it for the type
/// of each field, and registers it. By hand, implement it and register it
/// with [`state_part!`](crate::state_part):
///
/// ```
/// use skiplock::FromState;
///
/// struct Mailer;
/// struct AppState {
///     mailer: Mailer,
/// }
///
/// impl FromState<AppState> for Mailer {
///     fn from_state(state: &AppState) -> &Mailer {
///         &state.mailer
///     }
/// }
/// skiplock::state_part!(AppState => Mailer);
/// ```
pub trait FromState<S>: Any + Send + Sync {
    /// The part of `state`.
    fn from_state(state: &S) -> &Self;
}

/// What a runner holds its state as.
pub(crate) type Erased = dyn Any + Send + Sync;

/// Gets a part out of an erased state (`None`: not the state it expects).
pub(crate) type PartFn = fn(&Erased) -> Option<&Erased>;

/// Not public API: one registered part, collected by `inventory`.
#[doc(hidden)]
pub struct PartDescriptor {
    state: fn() -> TypeId,
    part: fn() -> TypeId,
    get: PartFn,
}

impl PartDescriptor {
    /// The descriptor of part `P` of state `S`.
    pub const fn of<S: Any + Send + Sync, P: FromState<S>>() -> Self {
        PartDescriptor {
            state: TypeId::of::<S>,
            part: TypeId::of::<P>,
            get: get_part::<S, P>,
        }
    }
}

impl std::fmt::Debug for PartDescriptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartDescriptor").finish_non_exhaustive()
    }
}

inventory::collect!(PartDescriptor);

fn get_part<S: Any + Send + Sync, P: FromState<S>>(state: &Erased) -> Option<&Erased> {
    state
        .downcast_ref::<S>()
        .map(|state| P::from_state(state) as &Erased)
}

fn whole(state: &Erased) -> Option<&Erased> {
    Some(state)
}

fn nothing(_: &Erased) -> Option<&Erased> {
    static NOTHING: () = ();
    Some(&NOTHING)
}

/// How a runner whose state is `state` gets a job's `part`, if it can:
/// nothing for a job that takes nothing (`()`), the whole state when the
/// types are the same, else a registered part.
pub(crate) fn part_fn(state: TypeId, part: TypeId) -> Option<PartFn> {
    if part == TypeId::of::<()>() {
        return Some(nothing);
    }
    if part == state {
        return Some(whole);
    }
    inventory::iter::<PartDescriptor>
        .into_iter()
        .find(|d| (d.state)() == state && (d.part)() == part)
        .map(|d| d.get)
}

/// What to write so that state `state` gives `part` (for messages).
pub(crate) fn how_to_give(part: &str, state: &str) -> String {
    format!(
        "give `{state}` a field of type `{part}` and `#[derive(skiplock::FromState)]`, or \
         implement `skiplock::FromState<{state}>` for `{part}` and register it with \
         `skiplock::state_part!({state} => {part})`"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct State {
        mailer: Mailer,
    }
    struct Mailer(&'static str);
    struct Unrelated;

    impl FromState<State> for Mailer {
        fn from_state(state: &State) -> &Mailer {
            &state.mailer
        }
    }
    crate::state_part!(State => Mailer);

    fn lookup<P: Any>(state: &State) -> Option<&P> {
        let get = part_fn(TypeId::of::<State>(), TypeId::of::<P>())?;
        get(state)?.downcast_ref::<P>()
    }

    #[test]
    fn parts_the_whole_and_nothing() {
        let state = State {
            mailer: Mailer("smtp"),
        };
        assert_eq!(lookup::<Mailer>(&state).map(|m| m.0), Some("smtp"));
        assert!(lookup::<State>(&state).is_some());
        assert!(lookup::<()>(&state).is_some());
        assert!(lookup::<Unrelated>(&state).is_none());
        // A part of another state type is not this state's part.
        assert!(part_fn(TypeId::of::<Unrelated>(), TypeId::of::<Mailer>()).is_none());
    }
}
