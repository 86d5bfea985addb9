use skiplock::{background_job, PerformError};

struct Env;

#[background_job(queue = "", colour = "blue")]
fn publish<T>(env: &mut Env, (a, b): (T, T)) -> Result<(), PerformError> {
    let _ = (env, a, b);
    Ok(())
}

fn main() {}
