"""Reads one scalar back from an .rrd with the Rerun SDK and prints repr(value): the value of
`entity` (Scalars) at the row where timeline `index` == `at`."""
import sys

from rerun.experimental import RrdReader

path, entity, index, at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
found = []
for chunk in RrdReader(path).stream().to_chunks():
    if chunk.entity_path != entity or chunk.is_static or index not in chunk.timeline_names:
        continue
    rb = chunk.to_record_batch()
    names = rb.schema.names
    cols = [n for n in names if n.endswith("scalars")]
    if len(cols) != 1:
        sys.exit(f"no single scalar column in {entity}: {names}")
    times = rb.column(names.index(index)).to_pylist()
    values = rb.column(names.index(cols[0])).to_pylist()
    found += [v for t, v in zip(times, values) if t == at and v is not None]
if len(found) != 1:
    sys.exit(f"{len(found)} values of {entity} at {index} == {at}")
print(repr(float(found[0][0])))
