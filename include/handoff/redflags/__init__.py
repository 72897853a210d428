"""Red flags: rules over activities, flag episodes, escalation and the people who hear of them."""
