-- Segments and election day select by county and precinct within one state, so the
-- geography index leads with county (a state-wide campaign's state matches everyone).
DROP INDEX IF EXISTS people_geo;
CREATE INDEX people_county ON people (county, precinct);
