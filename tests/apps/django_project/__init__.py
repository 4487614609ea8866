"""A small Django project, as a user would write one: two regressors behind
``v1/models/<str:name>:predict``, an API-key check in a middleware, a view that fails."""
