-- Name search as index ranges: an expression index on the lower-cased last name
-- (the NOCASE index could not serve a range over lower()).
DROP INDEX IF EXISTS people_last;
CREATE INDEX people_last_lower ON people (lower(last_name));
