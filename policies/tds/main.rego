# The single entrypoint both engines query: data.tds.main.decision, by action.
package tds.main

import data.tds.access
import data.tds.contract
import data.tds.usage
import rego.v1

decision := access.decision if input.action == "catalog.read"

decision := access.list_decision if input.action == "catalog.list"

decision := contract.decision if input.action == "contract.request"

decision := usage.decision if input.action == "transfer.start"

decision := usage.decision if input.action == "compute.run"

# A stream: at subscribe and at every re-check while it runs (connector.transfer.streaming).
decision := usage.decision if input.action == "stream.continue"
