-- Segment counts and name searches from indexes alone on PostgreSQL, as SQLite
-- already does (its index entries carry the row's id; PostgreSQL's point at the row's
-- place in the table, so each match was read from the table to learn its id).
--
-- Counting a county's subscribers without donors over 1M people: 106-120 ms, of which
-- half read matching rows; with the id in the index (and the tag looked up once, see
-- segments.rs) 33-39 ms.
CREATE INDEX people_geo_consent_id ON people (county, precinct, email_consent, sms_consent) INCLUDE (id);
DROP INDEX IF EXISTS people_geo_consent;
ALTER INDEX people_geo_consent_id RENAME TO people_geo_consent;
-- A name search for a common prefix ("smi": 31k people) read each match from the
-- table: 110-160 ms warm; from the indexes, 23-32 ms. An index on an expression
-- answers alone only when it also holds the columns the expression reads, hence
-- last_name beside the id.
CREATE INDEX people_search_c_id ON people ((search_name COLLATE "C")) INCLUDE (id);
DROP INDEX IF EXISTS people_search_c;
ALTER INDEX people_search_c_id RENAME TO people_search_c;
CREATE INDEX people_last_c_id ON people ((lower(last_name) COLLATE "C")) INCLUDE (id, last_name);
DROP INDEX IF EXISTS people_last_c;
ALTER INDEX people_last_c_id RENAME TO people_last_c;
-- A state-wide count scanned the whole table (140-200 ms for 1M people, the target
-- being 200). Everyone in a state file shares one value, which an index stores once
-- per page of ids (7 MB for 1M people), and a count of it takes 36-56 ms.
CREATE INDEX IF NOT EXISTS people_state ON people (state);
