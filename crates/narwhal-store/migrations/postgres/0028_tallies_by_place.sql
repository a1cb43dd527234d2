-- A polling place's universe and remaining supporters are read from the tallies
-- (a few rows per precinct) instead of counted over the universe, which took most of
-- a second per listing at 200,000 supporters. Rows change only in `people`, which no
-- index holds, so tally upserts stay as cheap as before.
CREATE INDEX turnout_tallies_place ON turnout_tallies (polling_place, hour);
