"""The only ORM writers: the job types the event loop hands over, the database
threads that run them, group commit, messages, AUTH records, bulk inserts and
retention."""
