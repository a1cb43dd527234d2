-- A payment id is unique per processor account, not across them: two vendors (or two
-- accounts of one fake) may hand out the same id.
DROP INDEX donations_processor_ref;
CREATE UNIQUE INDEX donations_processor_ref ON donations (processor, processor_ref) WHERE processor_ref IS NOT NULL;
CREATE INDEX donations_by_processor_ref ON donations (processor_ref) WHERE processor_ref IS NOT NULL;
