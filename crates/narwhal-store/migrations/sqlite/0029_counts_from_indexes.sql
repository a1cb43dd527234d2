-- PostgreSQL gets its segment counts from indexes here (an id in the county index, an
-- index on state). SQLite's indexes carry the id already and it has one on state
-- (0018), so nothing changes on this backend.
SELECT 1;
