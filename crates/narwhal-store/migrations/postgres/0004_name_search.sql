-- Name search as index ranges in code-point order, whatever the database collation.
DROP INDEX IF EXISTS people_search;
DROP INDEX IF EXISTS people_last;
CREATE INDEX people_search_c ON people ((search_name COLLATE "C"));
CREATE INDEX people_last_c ON people ((lower(last_name) COLLATE "C"));
