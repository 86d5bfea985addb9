//! Payments.

use std::sync::atomic::Ordering;

use skiplock::{background_job, PerformError};

use crate::App;

/// Charges a card; a declined card cannot succeed by retrying: permanent.
#[background_job(name = "billing.charge_card", priority = 10)]
pub fn charge_card(app: &App, cents: u32) -> Result<(), PerformError> {
    if !app.card_fixed.load(Ordering::SeqCst) {
        app.say("charge_card: card declined (permanent): the job is now dead");
        return Err(PerformError::permanent("card declined: expired card"));
    }
    app.say(format!("charge_card: charged {cents} cents"));
    Ok(())
}
