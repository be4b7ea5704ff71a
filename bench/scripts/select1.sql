-- One SELECT 1 round trip: the latency a hop adds, nothing else.
SELECT 1;
