"""Pages of the Streamlit app (app.py is the router)."""
