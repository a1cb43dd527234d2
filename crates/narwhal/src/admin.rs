//! `narwhal admin`: users, tokens, backups and the effective configuration.

use crate::config::{open_store, Settings};
use anyhow::{bail, Context};
use narwhal_domain::{Role, Scope};
use std::io::Read;
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum AdminCommand {
    /// Create a staff login. The password is read from stdin with --password-stdin, or generated and printed once.
    CreateUser {
        username: String,
        /// admin, staff or volunteer.
        #[arg(long, default_value = "staff")]
        role: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Create an API token with scopes; the token is printed once and only its hash is stored.
    CreateToken {
        name: String,
        /// Comma-separated scopes, e.g. people:read,lists:read.
        #[arg(long)]
        scopes: String,
    },
    /// A consistent online backup of the SQLite database (safe while serving).
    Backup { path: PathBuf },
    /// Print the effective configuration, secrets hidden.
    Config,
}

pub async fn run(settings: &Settings, cmd: AdminCommand) -> anyhow::Result<()> {
    match cmd {
        AdminCommand::Config => {
            print!("{}", settings.describe());
            Ok(())
        }
        AdminCommand::CreateUser {
            username,
            role,
            password_stdin,
        } => {
            let role = Role::parse(&role).map_err(|e| anyhow::anyhow!("--role: {e}"))?;
            if username.trim().is_empty() || username.len() > 64 {
                bail!("username: 1 to 64 characters");
            }
            let (password, generated) = if password_stdin {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                (s.trim_end_matches(['\n', '\r']).to_string(), false)
            } else {
                (narwhal_http::auth::new_token().0[..20].to_string(), true)
            };
            if password.len() < 10 {
                bail!("password: at least 10 characters");
            }
            let hash = narwhal_http::auth::hash_password(&password)
                .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?;
            let store = open_store(settings).await?;
            store.create_user(&username, &hash, role).await?;
            println!("created {} user {username}", role.as_str());
            if generated {
                println!("password (shown once): {password}");
            }
            Ok(())
        }
        AdminCommand::CreateToken { name, scopes } => {
            let scopes =
                Scope::parse_list(&scopes).map_err(|e| anyhow::anyhow!("--scopes: {e}"))?;
            if scopes.is_empty() {
                bail!("--scopes: name at least one of {}", Scope::list());
            }
            let (token, hash) = narwhal_http::auth::new_token();
            let store = open_store(settings).await?;
            store.create_token(&name, &hash, &scopes, "cli").await?;
            println!("token {name} (shown once): {token}");
            Ok(())
        }
        AdminCommand::Backup { path } => {
            let store = open_store(settings).await?;
            store
                .backup_sqlite(&path)
                .await
                .with_context(|| format!("backing up to {}", path.display()))?;
            println!("backed up to {}", path.display());
            Ok(())
        }
    }
}
