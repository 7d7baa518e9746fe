"""The training engine shared by every stage: schedules (schedule.py); the loop comes with the training issue."""
