"""Approvals: slots that wait for a person (HITL) before they may fire.

``decisions`` is what a person does (list, approve, reject); ``gate`` is what the sensor does
with the answers (open approvals for due slots, time them out, launch the approved).
"""
