-- A poll watcher's mobile phone (E.164), so that an SMS report is taken only from a
-- phone that belongs to a watcher, for that watcher's polling place.
ALTER TABLE watchers ADD COLUMN phone TEXT;
CREATE UNIQUE INDEX watchers_phone ON watchers (phone) WHERE phone IS NOT NULL;
