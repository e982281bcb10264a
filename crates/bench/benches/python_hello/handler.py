# The Python hello function: one JSON request per line on stdin, one JSON response
# line on stdout. Its ready point is the loop's first read of stdin.
import json
import sys

for line in sys.stdin:
    request = json.loads(line)
    name = request.get("name", "world")
    sys.stdout.write(json.dumps({"message": f"Hello, {name}!"}) + "\n")
    sys.stdout.flush()
