//! Staff logins, API tokens and browser sessions. Only hashes of secrets are stored.

use crate::error::{Result, StoreError};
use crate::{now_ms, Store};
use narwhal_domain::{Role, Scope, TokenId, UserId};
use serde::Serialize;
use sqlx::Row;

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub role: Role,
    pub disabled: bool,
    #[serde(skip)]
    pub password_hash: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiToken {
    pub id: TokenId,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created_by: String,
    pub created_at: i64,
    pub revoked: bool,
}

/// What [`Store::watcher_session`] reads: a live session's (enabled) user and their
/// watcher row, if they are a watcher.
#[derive(Debug, Clone)]
pub struct WatcherSession {
    pub user: UserId,
    pub username: String,
    pub role: Role,
    /// When the session ends (ms since the epoch).
    pub session_expires_at: i64,
    pub watcher: Option<crate::turnout::Watcher>,
}

fn parse_role(s: &str) -> Result<Role> {
    Role::parse(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Store {
    pub async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        role: Role,
    ) -> Result<UserId> {
        on_write!(self, p => {
            let disabled = false;
            let id: i64 = sqlx::query_scalar("INSERT INTO users (username, password_hash, role, disabled, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id")
                .bind(username).bind(password_hash).bind(role.as_str()).bind(disabled).bind(now_ms())
                .fetch_one(p).await.map_err(|e| StoreError::from_unique(e, &format!("user {username}")))?;
            Ok(UserId(id))
        })
    }

    pub async fn set_password(&self, username: &str, password_hash: &str) -> Result<()> {
        let n = on_write!(self, p => sqlx::query("UPDATE users SET password_hash = $1 WHERE username = $2").bind(password_hash).bind(username).execute(p).await.map(|r| r.rows_affected()))?;
        if n == 0 {
            return Err(StoreError::NotFound("user"));
        }
        Ok(())
    }

    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>> {
        self.user_where("username = $1", username.to_string()).await
    }

    pub async fn user_by_id(&self, id: UserId) -> Result<Option<User>> {
        // Bound as an integer, so that the lookup uses the primary key.
        self.user_where("id = $1", id.0).await
    }

    async fn user_where<A>(&self, cond: &str, arg: A) -> Result<Option<User>>
    where
        A: for<'q> sqlx::Encode<'q, sqlx::Sqlite>
            + for<'q> sqlx::Encode<'q, sqlx::Postgres>
            + sqlx::Type<sqlx::Sqlite>
            + sqlx::Type<sqlx::Postgres>
            + Send
            + 'static,
    {
        let sql =
            format!("SELECT id, username, password_hash, role, disabled FROM users WHERE {cond}");
        on_read!(self, p => {
            let Some(r) = sqlx::query(&sql).bind(arg).fetch_optional(p).await? else { return Ok(None) };
            let role: String = r.try_get("role")?;
            Ok(Some(User {
                id: UserId(r.try_get("id")?),
                username: r.try_get("username")?,
                role: parse_role(&role)?,
                disabled: r.try_get("disabled")?,
                password_hash: r.try_get("password_hash")?,
            }))
        })
    }

    pub async fn create_token(
        &self,
        name: &str,
        token_hash: &str,
        scopes: &[Scope],
        created_by: &str,
    ) -> Result<TokenId> {
        let scopes = scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",");
        on_write!(self, p => {
            let id: i64 = sqlx::query_scalar("INSERT INTO api_tokens (name, token_hash, scopes, created_by, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id")
                .bind(name).bind(token_hash).bind(scopes).bind(created_by).bind(now_ms())
                .fetch_one(p).await?;
            Ok(TokenId(id))
        })
    }

    /// The live (not revoked) token with this hash.
    pub async fn token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>> {
        on_read!(self, p => {
            let Some(r) = sqlx::query("SELECT id, name, scopes, created_by, created_at, revoked_at FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL")
                .bind(token_hash).fetch_optional(p).await? else { return Ok(None) };
            let scopes: String = r.try_get("scopes")?;
            let revoked: Option<i64> = r.try_get("revoked_at")?;
            Ok(Some(ApiToken {
                id: TokenId(r.try_get("id")?),
                name: r.try_get("name")?,
                scopes: Scope::parse_list(&scopes).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                created_by: r.try_get("created_by")?,
                created_at: r.try_get("created_at")?,
                revoked: revoked.is_some(),
            }))
        })
    }

    pub async fn revoke_token(&self, id: TokenId) -> Result<()> {
        on_write!(self, p => sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2").bind(now_ms()).bind(id.0).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    pub async fn create_session(&self, token_hash: &str, user: UserId, ttl_ms: i64) -> Result<()> {
        let now = now_ms();
        on_write!(self, p => sqlx::query("INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(token_hash).bind(user.0).bind(now).bind(now + ttl_ms).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// The user of an unexpired session.
    pub async fn session_user(&self, token_hash: &str) -> Result<Option<User>> {
        // One statement per authenticated request: the session and its user together.
        let sql = "SELECT u.id, u.username, u.password_hash, u.role, u.disabled FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = $1 AND s.expires_at > $2";
        let user = on_read!(self, p => {
            let Some(r) = sqlx::query(sql).bind(token_hash).bind(now_ms()).fetch_optional(p).await? else { return Ok(None) };
            let role: String = r.try_get("role")?;
            User {
                id: UserId(r.try_get("id")?),
                username: r.try_get("username")?,
                role: parse_role(&role)?,
                disabled: r.try_get("disabled")?,
                password_hash: r.try_get("password_hash")?,
            }
        });
        Ok(Some(user).filter(|u| !u.disabled))
    }

    /// The caller of a poll-watcher route in one statement: the session's user (left
    /// out when disabled), when the session ends, and the user's watcher row if any.
    /// `None` for an unknown or expired session.
    pub async fn watcher_session(&self, token_hash: &str) -> Result<Option<WatcherSession>> {
        let sql = "SELECT u.id, u.username, u.role, u.disabled, s.expires_at AS session_expires_at,
                w.id AS watcher_id, w.polling_place, w.kind, w.secret_hash, w.issued_at, w.expires_at
            FROM sessions s JOIN users u ON u.id = s.user_id LEFT JOIN watchers w ON w.user_id = u.id
            WHERE s.token_hash = $1 AND s.expires_at > $2";
        on_read!(self, p => {
            let Some(r) = sqlx::query(sql).bind(token_hash).bind(now_ms()).fetch_optional(p).await? else { return Ok(None) };
            if r.try_get::<bool, _>("disabled")? {
                return Ok(None);
            }
            let role: String = r.try_get("role")?;
            let user = UserId(r.try_get("id")?);
            let watcher = match r.try_get::<Option<i64>, _>("watcher_id")? {
                None => None,
                Some(id) => Some(crate::turnout::Watcher {
                    id,
                    user_id: user,
                    polling_place: r.try_get("polling_place")?,
                    kind: r.try_get("kind")?,
                    secret_hash: r.try_get("secret_hash")?,
                    issued_at: r.try_get("issued_at")?,
                    expires_at: r.try_get("expires_at")?,
                }),
            };
            Ok(Some(WatcherSession {
                user,
                username: r.try_get("username")?,
                role: parse_role(&role)?,
                session_expires_at: r.try_get("session_expires_at")?,
                watcher,
            }))
        })
    }

    pub async fn delete_session(&self, token_hash: &str) -> Result<()> {
        on_write!(self, p => sqlx::query("DELETE FROM sessions WHERE token_hash = $1").bind(token_hash).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }
}
