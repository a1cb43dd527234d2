//! Reads for `narwhal gameday`'s verifier: the raw rows an acknowledgement must have
//! left, never the counters the system keeps about itself.

use crate::error::Result;
use crate::Store;
use sqlx::Row;

impl Store {
    /// Every turnout report whose id starts with `prefix`, with how many rows carry
    /// that id (the unique key says one; the verifier checks rather than trusts it).
    pub async fn report_id_counts(&self, prefix: &str) -> Result<Vec<(String, i64)>> {
        let pattern = format!("{}%", prefix.replace('%', "").replace('_', "\\_"));
        on_read!(self, p => {
            let rows = sqlx::query(
                "SELECT report_id, COUNT(*) AS n FROM turnout_reports WHERE report_id LIKE $1 ESCAPE '\\' GROUP BY report_id",
            )
            .bind(&pattern)
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| Ok((r.try_get::<String, _>("report_id")?, r.try_get::<i64, _>("n")?)))
                .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
        })
        .map_err(Into::into)
    }
}
