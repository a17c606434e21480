# nbgrader settings for the face-generation assignment: copy this file into your course folder (beside source/)
# and merge it with your own nbgrader_config.py.  docs/teaching.md walks through a course.
c = get_config()  # noqa: F821 - nbgrader provides get_config

c.CourseDirectory.course_id = "facegan"
# Section 6 trains the learner's networks: give a cell minutes, not nbgrader's default 30 seconds.
c.Execute.timeout = 900
# The assignment trains for a smoke-sized budget when CI is set; autograde with `CI=1 nbgrader autograde ...`.
