use skiplock::FromState;

pub struct Mailer;

#[derive(FromState)]
struct AppState {
    mailer: Mailer,
    backup_mailer: Mailer,
}

fn main() {}
