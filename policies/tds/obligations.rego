# Obligations returned with a decision, for the consumer's connector to enforce.
package tds.obligations

import data.tds.common
import rego.v1

# At contract time: what the offer asks for.
for_offer := object.union(object.get(input.offer, "obligations", {}), personal)

# At transfer time: what the agreement fixed, plus delete-after capped by the agreement's
# end, and deletion on consent withdrawal for personal data.
for_contract := object.union(object.union(object.get(input.contract, "obligations", {}), personal), delete_after)

personal := {"delete_on_consent_withdrawal": true} if common.is_personal else := {}

delete_after := {"delete_after_ns": min({
	object.get(object.get(input.contract, "obligations", {}), "delete_after_ns", input.contract.valid_until_ns),
	input.contract.valid_until_ns,
})}
